"""Faults of the server itself: signals during load, kill -9, bad start-up (SPEC §2.1, §7)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

import hostile
from conftest import (
    Server,
    connect,
    descendants,
    exchange,
    needs,
    recv_lines,
    run,
    script,
    start_server,
)
from tcpkit.serving.run import MODES

# A 55-digit semiprime: about two seconds of FLINT, so it is surely in flight.
SLOW_NUMBER = 1483159930438141705007208490787510359681610390053997813
SLOW_FACTORS = b"1203581308086032114270498633 1232288936753847694672016461"


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_during_load_answers_every_line_it_read(serve: object, mode: str) -> None:
    server: Server = serve("reverse", "--mode", mode, "--drain-timeout", "20")  # type: ignore[operator]
    outcome = hostile.sigterm_under_load(server, 1 if mode == "iterative" else 8, mode)
    print(outcome)
    details = outcome.details
    assert details["exit"] == 0, server.stderr()[-2000:]
    assert details["wrong"] == 0 and details["tracebacks"] == 0, details
    assert outcome.lost == 0 and details["per_client_match"], details
    assert details["stop_seconds"] < 20, details  # within --drain-timeout
    assert re.search(r"stopped after .* s: ", server.stderr())


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_lets_an_inflight_factorization_finish(serve: object, mode: str) -> None:
    server: Server = serve("factor", "--mode", mode)  # type: ignore[operator]
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"%d\n42\n" % SLOW_NUMBER)
        time.sleep(0.5)  # the server has read both lines and started the work
        server.process.send_signal(signal.SIGTERM)
        assert recv_lines(sock, 2) == [SLOW_FACTORS + b"\n", b"2 3 7\n"]
        assert sock.recv(16) == b""
    assert server.process.wait(30) == 0


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_to_the_process_group_spares_the_workers(mode: str) -> None:
    """^C reaches every process of the group; workers must leave it to the server.

    Regression: workers died of the SIGINT and the drain answered
    ``error: worker process died`` instead of the factors.
    """
    command = [*script("tcpkit"), "serve", "factor", "--mode", mode,
               "--listen", "127.0.0.1:0"]
    server = start_server(["setsid", *command])
    try:
        with connect(server.port, timeout=30) as sock:
            sock.sendall(b"%d\n" % SLOW_NUMBER)
            time.sleep(0.5)
            os.killpg(server.pid, signal.SIGINT)
            assert recv_lines(sock, 1) == [SLOW_FACTORS + b"\n"]
        assert server.process.wait(30) == 0
    finally:
        server.stop(signal.SIGKILL)


def test_kill_9_of_the_server_takes_its_workers_along(serve: object) -> None:
    """Regression: an orphaned worker went on factoring for minutes after kill -9."""
    server: Server = serve("factor", "--factor-workers", "1", "--time-limit", "300")  # type: ignore[operator]
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"%d\n" % hard_semiprime())
        deadline = time.monotonic() + 30
        while len(descendants(server.pid)) < 2:  # the forkserver and its worker
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.1)
        family = descendants(server.pid)
        time.sleep(0.5)
        server.process.kill()
        server.process.wait(10)
        deadline = time.monotonic() + 20
        while alive := [pid for pid in family if hostile._running(pid)]:
            assert time.monotonic() < deadline, f"orphans still running: {alive}"
            time.sleep(0.1)


def hard_semiprime() -> int:
    """A 75-digit semiprime: minutes of FLINT time (from the client tests)."""
    from test_reliability_clients import hard_semiprime as make

    return make()


def serves_workers() -> bool:
    done = run([*script("tcpkit"), "serve", "--help"], timeout=30)
    return b"--workers" in done.stdout


@pytest.mark.parametrize("mode", [m for m in MODES if m != "iterative"])
def test_kill_9_of_one_worker_costs_only_its_inflight_requests(serve: object,
                                                                mode: str) -> None:
    if not serves_workers():
        pytest.skip("--workers is not in this build yet")
    server: Server = serve("reverse", "--mode", mode, "--workers", "2")  # type: ignore[operator]
    outcome = hostile.worker_killed(server, clients=4, seconds=3, mode=mode)
    print(outcome)
    details = outcome.details
    assert details["replaced"] and details["workers_alive"] == 2, (details, server.stderr())
    assert outcome.lost <= 4, details  # one request in flight per client at most
    assert details["failed_outside_window"] == 0, details
    assert details["ok_total"] > details["ok_before_kill"], details  # served throughout


# -- start-up failures: one clear line, exit 1 ------------------------------------------


def test_port_in_use_is_one_line_and_exit_1(serve: object) -> None:
    first: Server = serve("reverse")  # type: ignore[operator]
    result = run([*script("tcpkit"), "serve", "reverse", "--listen",
                  f"127.0.0.1:{first.port}"], timeout=30)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{first.port}: Address already in use"]
    assert exchange(first.port, b"still here\n") == b"ereh llits\n"


# Root without the capability to bind low ports (it keeps its files: running as
# nobody would also lose the packages installed under root's home).
UNPRIVILEGED = ["setpriv", "--bounding-set", "-net_bind_service",
                "--inh-caps", "-net_bind_service"] if os.geteuid() == 0 else []


@needs("setpriv")
def test_permission_denied_on_a_low_port_is_one_line_and_exit_1() -> None:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as setting:
        if int(setting.read()) <= 80:
            pytest.skip("this kernel lets anyone bind port 80")
    result = run([*UNPRIVILEGED, *script("tcpkit"), "serve", "reverse", "--listen", "127.0.0.1:80"],
                 timeout=30)
    assert result.returncode == 1, result
    assert result.stderr.decode().splitlines() == [
        "error: cannot listen on 127.0.0.1:80: Permission denied"]


@pytest.mark.parametrize("mode", ["thread"])
def test_drain_with_over_a_thousand_clients_lingers_without_select(serve: object,
                                                                   mode: str) -> None:
    """Regression: the lingering close used select(), which cannot take fds >= 1024."""
    server: Server = serve("reverse", "--mode", mode)  # type: ignore[operator]
    with hostile.crowd(server.port, 1100) as socks:
        assert len(socks) == 1100
        assert hostile.served(server.port) == 1  # the server has accepted them all
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    server.stop()
    assert "Traceback" not in server.stderr() and "ValueError" not in server.stderr()
