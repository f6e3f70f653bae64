"""The blocking driver's fast path (thread mode): blocking recv, no poll, same promises.

The connection's thread blocks in ``recv`` with ``SO_RCVTIMEO`` at most the
gate's TICK; these tests pin down that it still notices the drain (without
taking the client's unread bytes from the kernel), hands over to the poll loop
whenever something is pending, and keeps the idle rule.  Real loopback
sockets throughout; the server tests run ``tcpkit serve --mode thread``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

from helpers.net import (
    assert_idle_closed_while_busy_served,
    connect,
    inetd_pair,
    recv_lines,
    recv_until_closed,
)
from helpers.servers import Servers
from tcpkit.services.reverse import SERVICE as REVERSE
from tcpkit.serving.config import Limits
from tcpkit.serving.modes.driver import Outcome, _Driver, serve_connection
from tcpkit.serving.modes.driver_fastpath import serve_settled
from tcpkit.serving.modes.pipes import Wakeup
from tcpkit.serving.offload.bridge import OffloadBridge


def _no_offload() -> OffloadBridge:
    raise AssertionError("the reverse service offloads nothing")


def _driver(sock: socket.socket, limits: Limits | None = None) -> _Driver:
    return _Driver(sock, REVERSE, limits or Limits(), [], _no_offload)


def _serve_in_thread(driver: _Driver, stop: Wakeup) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(serve_settled(driver, stop)),
                              daemon=True)
    thread.start()
    return thread, result


def test_the_stop_flag_ends_a_recv_blocked_with_nothing_to_read() -> None:
    client, accepted = inetd_pair()
    with client, accepted:
        driver, stop = _driver(accepted), Wakeup()
        thread, result = _serve_in_thread(driver, stop)
        # No byte ever comes: only a recv that times out (at most TICK, 1 s,
        # after it began) can see the flag, however the threads interleave.
        stop.set()
        thread.join(20)
        assert result == [True], "the blocked recv never noticed the drain"
        assert driver.conn.lines == 0 and not driver.gone
    stop.close()


def test_a_line_crossing_the_drain_is_answered_or_left_unread() -> None:
    """Every line the fast path reads is answered; the rest stays in the kernel
    (no shutdown(SHUT_RD), which would turn the linger's later bytes into a reset)."""
    client, accepted = inetd_pair()
    with client, accepted:
        driver, stop = _driver(accepted), Wakeup()
        thread, result = _serve_in_thread(driver, stop)
        client.sendall(b"abc\n")
        assert recv_lines(client, 1) == [b"cba\n"]
        stop.set()
        client.sendall(b"late\n")
        thread.join(20)
        assert result == [True]
        client.settimeout(0.5)
        answered = b""
        with contextlib.suppress(TimeoutError):
            answered = client.recv(100)
        left = b""
        with contextlib.suppress(BlockingIOError):
            left = accepted.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        assert (answered, left) in ((b"etal\n", b""), (b"", b"late\n"))
        assert driver.conn.lines == (2 if answered else 1)
    stop.close()


def test_a_short_send_hands_over_to_the_poll_loop_and_loses_nothing() -> None:
    """The client reads nothing until it has sent 64 KB, more than the small
    socket buffers between the two ends hold: a send comes up short, and the
    poll loop takes over with the rest, in order."""
    client, accepted = inetd_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    lines = [b"%07d\n" % i for i in range(8_000)]
    stop = Wakeup()
    outcome: list[Outcome] = []
    server = threading.Thread(target=lambda: outcome.append(serve_connection(
        accepted, REVERSE, Limits(), [stop.fileno()], _no_offload, blocking_stop=stop)),
        daemon=True)
    server.start()
    with client:
        client.sendall(b"".join(lines))
        client.shutdown(socket.SHUT_WR)
        reply = recv_until_closed(client)
    server.join(20)
    stop.close()
    assert reply == b"".join(line[-2::-1] + b"\n" for line in lines)
    assert outcome and outcome[0].lines == len(lines)


def test_an_idle_client_blocked_in_recv_is_let_go_at_the_drain(serve: Servers) -> None:
    """Within a tick of SIGTERM, not at the drain timeout (60 s here)."""
    server = serve("reverse", "--mode", "thread", "--drain-timeout", "60")
    with connect(server.port, timeout=30) as idle:
        idle.sendall(b"one\n")
        assert recv_lines(idle, 1) == [b"eno\n"]
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert recv_until_closed(idle) == b""
        assert server.process.wait(30) == 0
        assert time.monotonic() - started < 30  # the drain timeout would take 61 s
    assert "cutting off" not in server.stderr()


def test_thread_mode_closes_the_idle_client_not_the_busy_one(serve: Servers) -> None:
    server = serve("reverse", "--mode", "thread", "--idle-timeout", "2")
    with connect(server.port, timeout=30) as idle, connect(server.port, timeout=30) as busy:
        idle.sendall(b"x")  # a line begun, never finished: the same deadline
        assert_idle_closed_while_busy_served(idle, busy)
    assert server.stop(signal.SIGTERM) == 0
    assert "1 closed idle" in server.stderr()
