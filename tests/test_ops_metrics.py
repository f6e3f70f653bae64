"""Prometheus metrics end to end: real traffic, then a real HTTP scrape of /metrics;
per-client limits (--max-per-ip, --rate-per-ip) refused and counted."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from helpers.metrics import metrics_port, scrape, value, wait_closed
from helpers.net import connect, exchange, recv_until_closed
from helpers.servers import needs, run, script

parser = pytest.importorskip("prometheus_client.parser")


# The exact counts after real traffic, in every mode and with --workers:
# tests/test_allmodes.py::test_metrics_exact_in_every_mode.


def test_open_connections_and_per_ip_refusals(serve) -> None:
    server = serve("reverse", "--metrics", "127.0.0.1:0", "--max-per-ip", "2")
    port = metrics_port(server)
    held = [connect(server.port), connect(server.port)]
    for sock in held:  # both really served
        sock.sendall(b"ab\n")
        assert sock.recv(10) == b"ba\n"
    with connect(server.port) as third:
        assert recv_until_closed(third) == b"error: too many connections from 127.0.0.1\n"
    got = scrape(port)
    labels = {"service": "reverse", "mode": "async"}
    assert value(got, "tcpkit_connections_open", **labels) == 2
    assert value(got, "tcpkit_connections_refused_total", reason="per_ip", **labels) == 1
    held.pop().close()
    wait_closed(server, 1)
    assert exchange(server.port, b"again\n") == b"niaga\n"  # a slot is free again
    for sock in held:
        sock.close()
    server.wait_for_stderr("refused 127.0.0.1:\\d+ \\(reverse\\): too many connections")


def test_rate_per_ip_refuses_with_a_clear_line(serve) -> None:
    server = serve("reverse", "--metrics", "127.0.0.1:0", "--rate-per-ip", "1/m")
    port = metrics_port(server)
    assert exchange(server.port, b"first\n") == b"tsrif\n"
    assert exchange(server.port, b"second\n") == b"error: connection rate exceeded\n"
    done = run([*script("tcpkit"), "reverse", f"127.0.0.1:{server.port}"], stdin=b"third\n")
    assert (done.returncode, done.stdout) == (1, b"")  # the client says it was refused
    assert done.stderr == b"error: connection rate exceeded\n"
    got = scrape(port)
    assert value(got, "tcpkit_connections_refused_total", reason="rate", service="reverse",
                 mode="async") == 2
    server.stop()
    assert "2 refused by per-client limits" in server.stderr()


def test_busy_refusals_are_counted(serve) -> None:
    server = serve("reverse", "--metrics", "127.0.0.1:0", "--max-connections", "1")
    port = metrics_port(server)
    with connect(server.port) as first:
        first.sendall(b"x\n")
        assert first.recv(10) == b"x\n"
        assert exchange(server.port, b"y\n") == b"error: server busy\n"
    assert value(scrape(port), "tcpkit_connections_refused_total", reason="busy",
                 service="reverse", mode="async") == 1


@needs("curl")
def test_curl_scrape(serve) -> None:
    server = serve("reverse", "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    exchange(server.port, b"a\nb\n")
    wait_closed(server, 1)
    done = run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"])
    assert done.returncode == 0
    assert re.search(rb'^tcpkit_lines_total\{mode="async",service="reverse"\} 2\.0$',
                     done.stdout, re.M), done.stdout.decode()


def test_metrics_port_in_use_is_one_line(serve) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        done = run([*script("tcpkit"), "serve", "reverse", "--listen", "127.0.0.1:0",
                    "--metrics", f"127.0.0.1:{taken}"])
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{taken} (metrics): Address already in use")


# A server's /metrics over a shared directory, in a fresh interpreter: the
# directory must be chosen before prometheus_client is first imported.
SHARED_DIRECTORY = """
import os, sys, urllib.error, urllib.request
from tcpkit.serving.observe import metrics
path = metrics.use_multiprocess_dir()
collector = metrics.Metrics("fork")
address = metrics.serve_metrics(metrics.Endpoint(host="127.0.0.1", port=0),
                                metrics.exposition_registry(collector))
"""


def run_with_shared_directory(body: str, timeout: float = 60.0) -> str:
    """Run ``body`` after :data:`SHARED_DIRECTORY`; what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", SHARED_DIRECTORY + body],
                          capture_output=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


MULTIPROCESS = """
children = []
for worker in range(3):
    pid = os.fork()
    if pid == 0:  # a worker process serving one connection of 5 lines
        collector.accepted("reverse", "127.0.0.1", 1000 + worker)
        collector.traffic("reverse", 30, 30, 5, 5, 5, 0.001)
        if worker:
            collector.closed("reverse", "127.0.0.1", 1000 + worker, 5, 0.1)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
sys.stdout.write(urllib.request.urlopen(f"http://{address}/metrics").read().decode())
metrics.worker_exited(children[0])
sys.stdout.write(urllib.request.urlopen(f"http://{address}/metrics").read().decode())
"""


def test_worker_processes_are_merged_in_one_scrape() -> None:
    text = run_with_shared_directory(MULTIPROCESS)
    labels = '{mode="fork",service="reverse"}'
    assert f"tcpkit_connections_total{labels} 3.0" in text
    assert f"tcpkit_lines_total{labels} 15.0" in text
    assert f"tcpkit_request_duration_seconds_count{labels} 15.0" in text
    opened = re.findall(rf"^tcpkit_connections_open{re.escape(labels)} (\S+)$", text, re.M)
    assert opened == ["1.0", "0.0"]  # worker 0 left one open; then it was marked dead


FOLD_WHILE_SCRAPED = """
CHILDREN = 150
worker = os.fork()
if worker == 0:  # a fork-mode worker: a child per client, folded when reaped
    for number in range(CHILDREN):
        child = os.fork()
        if child == 0:
            collector.accepted("reverse", "127.0.0.1", number)
            collector.traffic("reverse", 6, 6, 1, 1, 1, 0.001)
            collector.closed("reverse", "127.0.0.1", number, 1, 0.01)
            os._exit(0)
        os.waitpid(child, 0)
        metrics.worker_exited(child)
    os._exit(0)
failures, scrapes = [], 0
while os.waitpid(worker, os.WNOHANG) == (0, 0):  # the supervisor scrapes meanwhile
    scrapes += 1
    try:
        urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read()
    except urllib.error.HTTPError as exc:
        failures.append(exc.code)
final = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
print(scrapes, failures)
print(final)
"""


def test_scrapes_while_a_worker_folds_its_children() -> None:
    """The fold (in a fork-mode worker) and the scrape (in the supervisor) never
    overlap: no scrape fails on a file unlinked under it, none counts twice."""
    head, final = run_with_shared_directory(FOLD_WHILE_SCRAPED, timeout=120).split("\n", 1)
    scrapes, failures = head.split(" ", 1)
    assert int(scrapes) > 0
    assert failures == "[]", f"{failures} of {scrapes} scrapes failed"
    labels = '{mode="fork",service="reverse"}'
    assert f"tcpkit_connections_total{labels} 150.0" in final
    assert f"tcpkit_lines_total{labels} 150.0" in final


KILLED_BEFORE_SIZING = """
collector.accepted("reverse", "127.0.0.1", 1)
child = os.fork()
if child == 0:  # killed after prometheus-client created its file, before it sized it
    open(os.path.join(path, f"counter_{os.getpid()}.db"), "ab").close()
    os._exit(0)
os.waitpid(child, 0)
before = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).status
metrics.worker_exited(child)
left = os.path.exists(os.path.join(path, f"counter_{child}.db"))
after = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
print(before, left)
print(after)
"""


def test_an_empty_file_of_a_killed_child_neither_fails_a_scrape_nor_the_fold() -> None:
    """prometheus-client cannot read an empty file (client_python#1199): the scrape
    passes over it, and the fold removes it, as it recorded nothing."""
    head, final = run_with_shared_directory(KILLED_BEFORE_SIZING).split("\n", 1)
    assert head == "200 False"
    assert 'tcpkit_connections_total{mode="fork",service="reverse"} 1.0' in final
