"""Scope: the operator's features -- TLS, metrics, logs, per-IP limits -- in every serving mode.

TLS (handshake timeout, SIGHUP reload), per-address limits, Prometheus metrics
(also merged across ``--workers`` and fork children), JSON logs and
``--resolve-names``; real servers, real peers.  Each feature's own details, in
the default mode, are test_ops_*'s; the modes' own behaviour (limits, drain,
cancellation) is test_modes'."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from helpers.metrics import metrics_port, scrape, settled, value, wait_closed
from helpers.net import connect, exchange, recv_until_closed
from helpers.numbers import BIG
from helpers.processes import descendants
from helpers.servers import Server, run, script, start_server
from tcpkit.client import ReverseClient
from tcpkit.serving.config import MODES

# -- TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tls_timeout_and_reload(serve, certs, mode: str) -> None:
    cert, key = certs.install("one")
    server: Server = serve("reverse", "factor", "--mode", mode, "--tls-cert", cert,
                           "--tls-key", key, "--tls-handshake-timeout", "1")
    rev, fac = (f"127.0.0.1:{server.ports[name]}" for name in ("reverse", "factor"))
    one, two = certs.path("one-ca.pem"), certs.path("two-ca.pem")
    # A client that never starts the handshake is closed after the timeout...
    with socket.create_connection(("127.0.0.1", server.ports["reverse"]), timeout=15) as silent:
        if mode != "iterative":  # ...and meanwhile the others are served
            with ReverseClient(rev, ca=one) as client:
                assert client.reverse("meanwhile") == "elihwnaem"
        assert silent.recv(100) == b""
    done = run([*script("tcpkit"), "factor", "--ca", one, "-s", fac, "42", BIG, "12"])
    assert (done.returncode, done.stdout) == (0, f"2 3 7\n{BIG}\n2 2 3\n".encode()), done.stderr
    with ReverseClient(rev, ca=one) as before:
        assert before.reverse("one") == "eno"
        certs.install("two")
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_stderr("TLS certificate reloaded")
        for child in descendants(server.pid) if mode == "fork" else []:
            os.kill(child, signal.SIGHUP)  # a hangup reaching the children harms nothing
        assert before.reverse("still open") == "nepo llits"
    with ReverseClient(rev, ca=two) as after:
        assert after.reverse("two") == "owt"
    assert server.process.poll() is None
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


# -- per-address limits, counted in the summary and the metrics ----------------------


@pytest.mark.parametrize("mode", MODES)
def test_per_ip_limits(serve, mode: str) -> None:
    server = serve("reverse", "--mode", mode, "--metrics", "127.0.0.1:0",
                   "--rate-per-ip", "1/m", *(["--max-per-ip", "1"] if mode != "iterative"
                                             else []))
    port = metrics_port(server)
    too_many = b"error: too many connections from 127.0.0.1\n"
    with connect(server.port) as held:
        held.sendall(b"ab\n")
        assert held.recv(10) == b"ba\n"
        if mode != "iterative":  # (iterative serves one at a time: the next one waits)
            assert exchange(server.port, b"x\n") == too_many
    wait_closed(server, 1)
    # Its address is released a moment after the close line (a thread ends, a child
    # is reaped); a per-address refusal meanwhile costs no rate token.
    deadline = time.monotonic() + 10
    while (reply := exchange(server.port, b"second\n")) == too_many:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert reply == b"error: connection rate exceeded\n"
    with connect(server.port) as third:
        assert recv_until_closed(third) == b"error: connection rate exceeded\n"
    got = scrape(port)
    labels = {"service": "reverse", "mode": mode}
    refused = {kind: value(got, "tcpkit_connections_refused_total", reason=kind, **labels)
               for kind in ("per_ip", "rate")}
    assert refused["rate"] == 2
    assert (refused["per_ip"] >= 1) == (mode != "iterative")
    assert server.stop() == 0
    total = int(sum(refused.values()))
    assert f"{total} refused by per-client limits" in server.stderr()
    assert "refused 127.0.0.1:" in server.stderr()


# -- metrics: exact figures after real traffic ----------------------------------------


@pytest.mark.parametrize("mode, workers", [*((m, 1) for m in MODES), ("async", 2),
                                           ("fork", 2)])
def test_metrics_exact_in_every_mode(serve, mode: str, workers: int) -> None:
    server = serve("reverse", "factor", "--mode", mode, "--workers", str(workers),
                   "--metrics", "127.0.0.1:0", "--max-line", "100")
    port = metrics_port(server)
    rev, fac = server.ports["reverse"], server.ports["factor"]
    payload = b"hello\nworld\r\nlast"
    first = exchange(rev, payload)
    assert first == b"olleh\ndlrow\r\ntsal\n"
    long_line = b"x" * 200 + b"\n"
    second = exchange(rev, b"ok\n" + long_line)
    assert second == b"ko\nerror: line too long (max 100 bytes)\n"
    replies = exchange(fac, b"42\nabc\n" + BIG.encode() + b"\n")
    assert replies.count(b"\n") == 3 and b"error: not an integer" in replies
    wait_closed(server, 3)
    rv = {"service": "reverse", "mode": mode}
    fc = {"service": "factor", "mode": mode}
    got = settled(port, rv)
    assert value(got, "tcpkit_connections_total", **rv) == 2
    assert value(got, "tcpkit_connections_total", **fc) == 1
    assert value(got, "tcpkit_connections_open", **rv) == 0
    assert value(got, "tcpkit_lines_total", **rv) == 4
    assert value(got, "tcpkit_replies_total", **rv) == 5
    assert value(got, "tcpkit_received_bytes_total", **rv) == len(payload) + 3 + len(long_line)
    assert value(got, "tcpkit_sent_bytes_total", **rv) == len(first) + len(second)
    assert value(got, "tcpkit_errors_total", kind="line_too_long", **rv) == 1
    assert value(got, "tcpkit_errors_total", kind="request", **fc) == 1
    assert value(got, "tcpkit_lines_total", **fc) == 3
    assert value(got, "tcpkit_replies_total", **fc) == 3
    assert value(got, "tcpkit_sent_bytes_total", **fc) == len(replies)
    assert value(got, "tcpkit_request_duration_seconds_count", **rv) == 4
    assert value(got, "tcpkit_request_duration_seconds_count", **fc) == 3
    assert value(got, "tcpkit_request_duration_seconds_bucket", le="+Inf", **fc) == 3
    with connect(rev) as held:  # an open connection shows, and goes when it closes
        held.sendall(b"z\n")
        assert held.recv(10) == b"z\n"
        assert value(scrape(port), "tcpkit_connections_open", **rv) == 1
    wait_closed(server, 4)
    assert value(settled(port, rv), "tcpkit_connections_total", **rv) == 3
    assert server.stop() == 0


# -- logs ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_json_logs_and_names(serve, mode: str) -> None:
    try:
        name = socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)[0]
    except OSError:
        name = "127.0.0.1"  # no reverse name here: the address stands in
    server = serve("reverse", "--mode", mode, "--log-format", "json", "--resolve-names",
                   "--max-connections", "1")
    with connect(server.port) as held:
        held.sendall(b"a\n")
        assert held.recv(10) == b"a\n"
        if mode != "iterative":
            assert exchange(server.port, b"b\n") == b"error: server busy\n"
    server.wait_for_stderr('"event": "close"')
    deadline = time.monotonic() + 10
    # The slot frees a moment after the close line (a thread ends, a child is reaped).
    while (reply := exchange(server.port, b"one\ntwo\n")) == b"error: server busy\n":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert reply == b"eno\nowt\n"
    deadline = time.monotonic() + 10
    while server.stderr().count('"event": "close"') < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()
    entries = [json.loads(line) for line in server.stderr_lines]
    events = [e["event"] for e in entries]
    assert events.count("accept") == 2 and events.count("close") == 2, events
    assert (events.count("refused") > 0) == (mode != "iterative")
    listening = next(e for e in entries if e["event"] == "listening")
    assert listening["mode"] == mode and listening["service"] == "reverse"
    closes = [e for e in entries if e["event"] == "close"]
    assert sorted(e["lines"] for e in closes) == [1, 2]
    for entry in entries:
        if entry["event"] in ("accept", "close", "refused"):
            assert entry["peer"].startswith(f"{name}:") and entry["service"] == "reverse"
    assert entries[-1]["event"] == "stopped"


def test_fork_children_fold_into_one_archive(tmp_path) -> None:
    """Fork mode starts a process per client: their metrics files are folded away
    when they are reaped, so the directory stays small and the counts stay exact."""
    server = start_server([*script("tcpkit"), "serve", "reverse", "--mode", "fork",
                           "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"],
                          env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    try:
        port = metrics_port(server)
        for number in range(8):
            assert exchange(server.port, b"%d\n" % number) == b"%d\n" % number
        wait_closed(server, 8)
        labels = {"service": "reverse", "mode": "fork"}
        deadline = time.monotonic() + 10
        while len(list(tmp_path.glob("*.db"))) > 5:  # the parent's files and its archives
            assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
            time.sleep(0.05)
        got = settled(port, labels)
        assert value(got, "tcpkit_connections_total", **labels) == 8
        assert value(got, "tcpkit_lines_total", **labels) == 8
        assert value(got, "tcpkit_request_duration_seconds_count", **labels) == 8
        names = sorted(p.name for p in tmp_path.glob("*.db"))
        assert names == sorted([f"counter_{server.pid}.db", f"histogram_{server.pid}.db",
                                f"gauge_livesum_{server.pid}.db",
                                f"counter_archive{server.pid}.db",
                                f"histogram_archive{server.pid}.db"]), names
    finally:
        assert server.stop() == 0


def test_sighup_reaches_every_worker(serve, certs) -> None:
    cert, key = certs.install("one")
    server = serve("reverse", "--mode", "thread", "--workers", "2", "--tls-cert", cert,
                   "--tls-key", key)
    endpoint = f"127.0.0.1:{server.port}"
    # "Listening on" comes before the workers are forked: both must exist before the
    # reload, or the test would not be sending it to "every worker".
    server.wait_for_stderr(r"(worker \d+ started[^\n]*\n[\s\S]*){2}", timeout=30)
    with ReverseClient(endpoint, ca=certs.path("one-ca.pem")) as before:
        assert before.reverse("one") == "eno"
        certs.install("two")
        server.process.send_signal(signal.SIGHUP)
        # The supervisor's own copy (for workers it forks later) and each worker's.
        server.wait_for_stderr(r"(TLS certificate reloaded[\s\S]*){3}", timeout=30)
        assert before.reverse("kept") == "tpek"
    for _ in range(4):  # whichever worker takes it
        with ReverseClient(endpoint, ca=certs.path("two-ca.pem")) as after:
            assert after.reverse("two") == "owt"
    assert "was killed" not in server.stderr()
    assert server.stop() == 0


def test_sighup_while_the_workers_start_is_not_lost(serve, certs) -> None:
    """A reload sent as soon as the server says it listens (the workers are still
    being forked, or starting to serve) reaches every worker all the same."""
    cert, key = certs.install("one")
    server = serve("reverse", "--mode", "thread", "--workers", "2", "--tls-cert", cert,
                   "--tls-key", key)
    certs.install("two")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_stderr(r"(worker \d+ started[^\n]*\n[\s\S]*){2}", timeout=30)
    server.wait_for_stderr("TLS certificate reloaded", timeout=30)
    for _ in range(8):  # the kernel spreads these over both workers
        with ReverseClient(f"127.0.0.1:{server.port}", ca=certs.path("two-ca.pem")) as after:
            assert after.reverse("two") == "owt"
    assert "was killed" not in server.stderr()
    assert server.stop() == 0
