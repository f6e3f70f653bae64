"""Scope: faults of the server itself -- signals during load, kill -9 of the server or a worker.

SPEC §2.1, §7: what the server does when it, not a client, is hit.  Hostile
clients are test_reliability_clients'; start-up errors test_e2e_serve's.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from helpers import hostile
from helpers.net import connect, recv_lines
from helpers.numbers import SLOW, SLOW_FACTORS, long_semiprime
from helpers.processes import alive, descendants, factor_workers, kill_all, wait_for, wait_working
from helpers.servers import Server, script, start_server
from tcpkit.serving.run import MODES

SLOW_REPLY = b"%d %d\n" % SLOW_FACTORS


def job_worker(server: Server) -> int:
    """The only factor worker of ``server`` (run with --factor-workers 1), once it computes."""
    return wait_working(lambda: factor_workers(server.pid))


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
    server: Server = serve("factor", "--mode", mode,  # type: ignore[operator]
                           "--factor-workers", "1")
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"%d\n42\n" % SLOW)
        job_worker(server)  # the server has read both lines and started the work
        server.process.send_signal(signal.SIGTERM)
        assert recv_lines(sock, 2) == [SLOW_REPLY, b"2 3 7\n"]
        assert sock.recv(16) == b""
    assert server.process.wait(30) == 0


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_to_the_process_group_spares_the_workers(mode: str) -> None:
    """^C reaches every process of the group; workers must leave it to the server.

    Regression: workers died of the SIGINT and the drain answered
    ``error: worker process died`` instead of the factors.
    """
    command = [*script("tcpkit"), "serve", "factor", "--mode", mode,
               "--listen", "127.0.0.1:0", "--factor-workers", "1"]
    server = start_server(["setsid", *command])
    try:
        with connect(server.port, timeout=30) as sock:
            sock.sendall(b"%d\n" % SLOW)
            job_worker(server)
            os.killpg(server.pid, signal.SIGINT)
            assert recv_lines(sock, 1) == [SLOW_REPLY]
        assert server.process.wait(30) == 0
    finally:
        server.stop(signal.SIGKILL)


def test_kill_9_of_the_server_takes_its_workers_along(serve: object) -> None:
    """Regression: an orphaned worker went on factoring for minutes after kill -9
    (the time limit, far off, is not what stops it here: the worker's tie to the
    server is)."""
    server: Server = serve("factor", "--factor-workers", "1", "--time-limit", "300")  # type: ignore[operator]
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"%d\n" % long_semiprime())
        job_worker(server)
        family = descendants(server.pid)  # the forkserver and its worker among them
        server.process.kill()
        server.process.wait(10)
    try:
        assert wait_for(lambda: not any(alive(pid) for pid in family), 20), \
            f"orphans still running: {[pid for pid in family if alive(pid)]}"
    finally:  # whatever happened, leave nothing running
        kill_all(family, signal.SIGKILL)


def test_workers_of_a_killed_server_stop_by_themselves(serve: object) -> None:
    """SIGKILL leaves no one to stop a long job: the kernel's CPU limit (the time
    limit, set on the worker as RLIMIT_CPU) must."""
    server: Server = serve("factor", "--time-limit", "1", "--factor-workers", "1")  # type: ignore[operator]
    with connect(server.port) as sock:
        sock.sendall(b"%d\n" % long_semiprime())
        job_worker(server)
        orphans = descendants(server.pid)
        server.process.kill()  # the server alone: its workers are on their own
        server.process.wait(10)
    try:
        assert wait_for(lambda: not any(alive(pid) for pid in orphans), 20), \
            f"workers still running: {[pid for pid in orphans if alive(pid)]}"
    finally:
        kill_all(orphans, signal.SIGKILL)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "iterative"])
def test_kill_9_of_one_worker_costs_only_its_inflight_requests(serve: object,
                                                                mode: str) -> None:
    server: Server = serve("reverse", "--mode", mode, "--workers", "2")  # type: ignore[operator]
    outcome = hostile.worker_killed(server, clients=4, seconds=3, mode=mode)
    print(outcome)
    details = outcome.details
    assert details["replaced"] and details["workers_alive"] == 2, (details, server.stderr())
    assert outcome.lost <= 4, details  # one request in flight per client at most
    assert details["failed_outside_window"] == 0, details
    assert details["ok_total"] > details["ok_before_kill"], details  # served throughout


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
