"""The factor service end to end: real server processes, real sockets, real workers.

Slow work is a 67-digit semiprime (tens of seconds for PARI or FLINT): the
tests never wait for it, they watch what happens around it — by ordering, and
by the worker processes (found as the children of the pool's forkserver):
which one is gone, which are asleep — not by timing thresholds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from helpers.net import abort, connect, exchange, readable, recv_lines
from helpers.numbers import HUGE, HUGE2, MID, reply_for, semiprimes
from helpers.processes import (
    cmdline,
    factor_workers,
    forkservers,
    wait_asleep,
    wait_for,
    wait_gone,
    wait_working,
)
from helpers.servers import Server
from tcpkit.serving.run import MODES


def test_pipelined_mix_comes_back_in_order(serve: Callable[..., Server]) -> None:
    server = serve("factor", "--factor-workers", "2")
    numbers = []
    for i in range(60):
        numbers += [MID[i % 4], 42 + i, 2**64 + i, -(10**20 + i), 1]
    payload = b"".join(b"%d\n" % n for n in numbers)
    replies = exchange(server.port, payload, timeout=60)
    assert replies.split(b"\n")[:-1] == [reply_for(n)[:-1] for n in numbers]


def test_errors_and_max_digits_keep_the_connection(serve: Callable[..., Server]) -> None:
    server = serve("factor", "--max-digits", "30")
    replies = exchange(server.port, b"abc\n0\n" + b"7" * 31 + b"\r\n42\r\n" + str(HUGE).encode()
                       + b"\n18446744073709551617")
    assert replies == (b'error: not an integer: "abc"\nerror: 0 has no prime factorization\n'
                       b"error: too many digits (max 30)\r\n2 3 7\r\n"
                       b"error: too many digits (max 30)\n274177 67280421310721\n")


def test_time_limit_stops_the_job_and_the_connection_goes_on(
        serve: Callable[..., Server]) -> None:
    server = serve("factor", "--time-limit", "1", "--factor-workers", "1")
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"%d\n42\n%d\n" % (HUGE, MID[0]))
        assert recv_lines(sock, 3) == [b"error: time limit exceeded (1 s)\n", b"2 3 7\n",
                                       reply_for(MID[0])]
    # The killed worker is not still computing (nor its replacement).
    assert wait_asleep(lambda: factor_workers(server.pid), 10)


def test_disconnect_stops_the_work_and_the_pool_stays_full(
        serve: Callable[..., Server]) -> None:
    server = serve("factor", "--factor-workers", "1")
    sock = connect(server.port)
    sock.sendall(b"%d\n" % HUGE)
    busy = wait_working(lambda: factor_workers(server.pid))
    abort(sock)
    assert wait_gone(busy, 10)  # well inside the 30 s time limit: it was cancelled
    # A fresh worker took its place, and waits for work.
    assert wait_for(lambda: len(factor_workers(server.pid)) == 1, 10), "no new worker"
    assert factor_workers(server.pid) != [busy]
    assert wait_asleep(lambda: factor_workers(server.pid), 10)
    assert exchange(server.port, b"%d\n" % MID[1]) == reply_for(MID[1])


@pytest.mark.parametrize("mode", MODES)
def test_workers_preload_what_the_services_declare(
        mode: str, serve: Callable[..., Server]) -> None:
    server = serve("reverse", "factor", "--mode", mode)
    assert exchange(server.ports["reverse"], b"abc\n") == b"cba\n"
    assert forkservers(server.pid) == []  # no offloaded work: no pool, no process
    with connect(server.ports["factor"], timeout=30) as sock:  # open: a fork child stays
        sock.sendall(b"%d\n" % MID[0])
        assert recv_lines(sock, 1) == [reply_for(MID[0])]
        [forkserver] = forkservers(server.pid)
        assert wait_for(lambda: factor_workers(server.pid), 10)
        # What the factor service declares, and nothing for reverse (it declares none):
        # the forkserver's preload list is in its command line, and its workers' too.
        preload = "['tcpkit.services.factor', 'tcpkit.factoring.preload']"
        for pid in [forkserver, *factor_workers(server.pid)]:
            assert preload in cmdline(pid)


def test_a_huge_number_does_not_delay_other_clients(serve: Callable[..., Server]) -> None:
    """Client A keeps the only worker busy; client B's mid-size numbers are answered meanwhile."""
    server = serve("factor", "--factor-workers", "1")
    with connect(server.port) as a, connect(server.port, timeout=30) as b:
        a.sendall(b"%d\n%d\n" % (HUGE, HUGE2))
        wait_working(lambda: factor_workers(server.pid))
        numbers = MID * 3 + [42, 2**64 + 1]
        b.sendall(b"".join(b"%d\n" % n for n in numbers))
        assert recv_lines(b, len(numbers)) == [reply_for(n) for n in numbers]
        assert not readable(a)  # A's first number is still being worked on
        abort(a)
    assert wait_asleep(lambda: factor_workers(server.pid), 10)


def test_a_pipelining_client_does_not_starve_another(serve: Callable[..., Server]) -> None:
    """A floods the pool with mid-size numbers; B's one number overtakes A's queue."""
    server = serve("factor", "--factor-workers", "1")
    numbers = semiprimes(32, 500)  # milliseconds each, offloaded
    with connect(server.port, timeout=60) as a, connect(server.port, timeout=60) as b:
        a.sendall(b"".join(b"%d\n" % n for n in numbers))
        wait_working(lambda: factor_workers(server.pid))
        b.sendall(b"%d\n" % MID[2])
        assert recv_lines(b, 1) == [reply_for(MID[2])]
        # A's replies so far are in its socket: the server writes each one when done.
        early = a.recv(1 << 20, socket.MSG_DONTWAIT).count(b"\n") if readable(a) else 0
        assert early < len(numbers)  # B was not queued behind all of A's numbers
        a.shutdown(socket.SHUT_WR)
        rest = recv_lines(a, len(numbers) - early)
    assert rest == [reply_for(n) for n in numbers[early:]]


@pytest.mark.parametrize("executor", ["dask:/nothing", "ftp://x:1", "dask://"])
def test_bad_executor_is_a_usage_error(executor: str) -> None:
    from helpers.servers import run, script

    done = run([*script("tcpkit"), "serve", "factor", "--executor", executor,
                "--listen", "127.0.0.1:0"], timeout=30)
    assert done.returncode == 2
    assert b"--executor" in done.stderr
