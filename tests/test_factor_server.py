"""The factor service end to end: real server processes, real sockets, real workers.

Slow work is a 67-digit semiprime (tens of seconds for PARI or FLINT): the
tests never wait for it, they watch what happens around it — by ordering and
by CPU counters, not by timing thresholds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from conftest import Server, connect, exchange, recv_lines
from factor_helpers import (
    FORKSERVER,
    HUGE,
    HUGE2,
    MID,
    abort,
    command_line,
    descendants,
    descendants_running,
    readable,
    reply_for,
    wait_busy,
    wait_idle,
    wait_until,
)
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
    assert wait_idle(server.pid) < 10  # the killed worker is not still computing


def test_disconnect_stops_the_work_and_the_pool_stays_full(
        serve: Callable[..., Server]) -> None:
    server = serve("factor", "--factor-workers", "1")
    sock = connect(server.port)
    sock.sendall(b"%d\n" % HUGE)
    wait_busy(server.pid)
    busy = set(descendants(server.pid))  # resource tracker, forkserver, the busy worker
    abort(sock)
    wait_idle(server.pid, timeout=5)  # well inside the 30 s time limit: it was cancelled
    # The busy worker is gone and a fresh one took its place.
    wait_until(lambda: len(set(descendants(server.pid))) == len(busy), 10, "a new worker")
    assert set(descendants(server.pid)) != busy
    assert exchange(server.port, b"%d\n" % MID[1]) == reply_for(MID[1])


@pytest.mark.parametrize("mode", MODES)
def test_workers_preload_what_the_services_declare(
        mode: str, serve: Callable[..., Server]) -> None:
    server = serve("reverse", "factor", "--mode", mode)
    assert exchange(server.ports["reverse"], b"abc\n") == b"cba\n"
    assert descendants_running(server.pid, FORKSERVER) == []  # no offloaded work, no pool
    with connect(server.ports["factor"], timeout=30) as sock:  # open: a fork child stays
        sock.sendall(b"%d\n" % MID[0])
        assert recv_lines(sock, 1) == [reply_for(MID[0])]
        pool = descendants_running(server.pid, FORKSERVER)  # the forkserver and its worker
        assert pool
        # What the factor service declares, and nothing for reverse (it declares none).
        for pid in pool:
            assert "['tcpkit.services.factor', 'tcpkit.factoring.preload']" in command_line(pid)


def test_a_huge_number_does_not_delay_other_clients(serve: Callable[..., Server]) -> None:
    """Client A keeps the only worker busy; client B's mid-size numbers are answered meanwhile."""
    server = serve("factor", "--factor-workers", "1")
    with connect(server.port) as a, connect(server.port, timeout=30) as b:
        a.sendall(b"%d\n%d\n" % (HUGE, HUGE2))
        wait_busy(server.pid)
        numbers = MID * 3 + [42, 2**64 + 1]
        b.sendall(b"".join(b"%d\n" % n for n in numbers))
        assert recv_lines(b, len(numbers)) == [reply_for(n) for n in numbers]
        assert not readable(a)  # A's first number is still being worked on
        abort(a)
    wait_idle(server.pid, timeout=5)


def test_a_pipelining_client_does_not_starve_another(serve: Callable[..., Server]) -> None:
    """A floods the pool with mid-size numbers; B's one number overtakes A's queue."""
    server = serve("factor", "--factor-workers", "1")
    semiprimes = [p * q for p, q in zip(_primes(10**15, 500), _primes(10**16, 500), strict=True)]
    with connect(server.port, timeout=60) as a, connect(server.port, timeout=60) as b:
        a.sendall(b"".join(b"%d\n" % n for n in semiprimes))
        wait_busy(server.pid, cpu_seconds=0.1)
        b.sendall(b"%d\n" % MID[2])
        assert recv_lines(b, 1) == [reply_for(MID[2])]
        time.sleep(0.1)  # let A's replies so far reach its socket
        early = a.recv(1 << 20, socket.MSG_DONTWAIT).count(b"\n") if readable(a) else 0
        assert early < len(semiprimes)  # B was not queued behind all of A's numbers
        a.shutdown(socket.SHUT_WR)
        rest = recv_lines(a, len(semiprimes) - early)
    assert rest == [reply_for(n) for n in semiprimes[early:]]


def _primes(start: int, count: int) -> list[int]:
    import flint

    found: list[int] = []
    n = start
    while len(found) < count:
        n += 1
        if flint.fmpz(n).is_probable_prime():
            found.append(n)
    return found


@pytest.mark.parametrize("executor", ["dask:/nothing", "ftp://x:1", "dask://"])
def test_bad_executor_is_a_usage_error(executor: str) -> None:
    from conftest import run, script

    done = run([*script("tcpkit"), "serve", "factor", "--executor", executor,
                "--listen", "127.0.0.1:0"], timeout=30)
    assert done.returncode == 2
    assert b"--executor" in done.stderr
