"""The async hot path's shortcuts keep the slow paths' behaviour.

The serving layer skips job, close and pause bookkeeping while a connection is
``settled``, the framer hands whole-line chunks straight through, and idle
tracking is a flag plus a tick counter.  These tests pin down that each shortcut
is taken only when nothing else has to happen.
"""

from __future__ import annotations

import socket

from helpers.net import assert_idle_closed_while_busy_served, connect, exchange
from tcpkit.connection import ServiceConnection
from tcpkit.framing import LineFramer
from tcpkit.service import Offload, Service
from tcpkit.services.reverse import SERVICE as REVERSE
from tcpkit.services.reverse import reverse_block


def _upper(line: bytes) -> bytes:
    return line.upper()


def _slow_or_fast(line: bytes) -> bytes | Offload:
    return Offload(_upper, (line,)) if line.startswith(b"slow") else line


def test_reverse_connection_stays_settled_on_plain_traffic() -> None:
    conn = ServiceConnection(REVERSE)
    assert conn.settled
    assert conn.receive_data(b"abc\ndef\n") == b"cba\nfed\n"
    assert conn.receive_data(b"x\r\n") == b"x\r\n"  # CRLF: the per-line path
    assert conn.settled and conn.lines == 3


def test_a_job_unsettles_until_its_reply_is_released() -> None:
    conn = ServiceConnection(Service("t", 1, "", _slow_or_fast))
    assert conn.receive_data(b"slow\nfast\n") == b""  # "fast" waits behind the job
    assert not conn.settled and conn.waiting == 2
    [job] = conn.take_jobs()
    assert conn.take_jobs() == []
    assert conn.job_done(job, b"SLOW") == b"SLOW\nfast\n"
    assert conn.settled and conn.waiting == 0 and not conn.finished


def test_eof_error_and_drain_unsettle() -> None:
    for finish in ("eof", "overflow", "drain"):
        conn = ServiceConnection(REVERSE, max_line=4)
        if finish == "eof":
            assert conn.receive_eof() == b""
        elif finish == "overflow":
            assert conn.receive_data(b"toolong\n").startswith(b"error: line too long")
        else:
            conn.stop_input()
        assert not conn.settled and conn.finished
        assert conn.receive_data(b"ab\n") == b""  # nothing is read after the end


def test_block_answer_is_followed_by_the_overflow_error() -> None:
    conn = ServiceConnection(REVERSE, max_line=8)
    out = conn.receive_data(b"ok\n" + b"x" * 100 + b"\nnever\n")
    assert out == b"ko\nerror: line too long (max 8 bytes)\n"
    assert conn.finished and not conn.settled


def test_framer_fast_path_respects_partial_lines_and_the_limit() -> None:
    framer = LineFramer(max_line=8)
    chunk = b"abc\n"
    assert framer.feed(chunk) is chunk  # whole lines pass through uncopied
    assert framer.feed(b"de") == b""
    assert framer.feed(b"f\n") == b"def\n"  # the held part is joined first
    assert framer.feed(b"123456789\n") == b"" and framer.overflowed


def test_reverse_block_falls_back_for_cr_and_non_ascii() -> None:
    assert reverse_block(b"ab\ncd\n") == b"ba\ndc\n"
    assert reverse_block(b"ab\r\n") is None
    assert reverse_block("añ\n".encode()) is None


def test_async_replies_in_order_around_offloaded_jobs(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve("factor")
    big = b"1000000000000000000000000000057\n"  # offloaded to a worker process
    reply = exchange(server.port, b"12\n" + big + b"15\n" + big + b"7\n", timeout=60)
    lines = reply.splitlines()
    assert len(lines) == 5, reply
    assert lines[0] == b"2 2 3" and lines[2] == b"3 5" and lines[4] == b"7"
    assert lines[1] == lines[3] and lines[1].split()  # the big number's factors, in place


def test_async_idle_client_is_closed_and_busy_one_is_not(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve("reverse", "--idle-timeout", "2")
    with connect(server.port, timeout=30) as idle, connect(server.port, timeout=30) as busy:
        assert_idle_closed_while_busy_served(idle, busy)
        busy.shutdown(socket.SHUT_WR)
