"""The per-connection state machine without sockets: order, jobs, limits, EOF."""

from __future__ import annotations

import pytest

from tcpkit import Offload, RequestError, Service
from tcpkit.connection import Job, ServiceConnection


def upper(text: bytes) -> bytes:
    return text.upper()


def answer(line: bytes) -> bytes | Offload:
    """Echo upper-cased; ``slow...`` lines are offloaded, ``bad`` and ``bug`` fail."""
    if line.startswith(b"slow"):
        return Offload(upper, (line,))
    if line == b"bad":
        raise RequestError("that is bad")
    if line == b"bug":
        raise ZeroDivisionError("a bug in the service")
    return line.upper()


def block_answer(block: bytes) -> bytes | None:
    return None if b"slow" in block or b"b" in block or b"\r" in block else block.upper()


SERVICE = Service("upper", 1, "upper-cases lines", answer)
FAST = Service("upper", 1, "upper-cases lines", answer, answer_block=block_answer)


def run_job(conn: ServiceConnection, job: Job) -> bytes:
    work = job.work
    return conn.job_done(job, work.func(*work.args))


@pytest.fixture(params=[SERVICE, FAST], ids=["per-line", "block-fast-path"])
def conn(request: pytest.FixtureRequest) -> ServiceConnection:
    return ServiceConnection(request.param, max_line=16)


def test_plain_lines_are_answered_at_once(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"a\nxy\r\n") == b"A\nXY\r\n"
    assert conn.take_jobs() == []
    assert conn.lines == 2 and not conn.finished


def test_replies_wait_behind_an_offloaded_job(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"a\nslow1\nc\n") == b"A\n"
    (job,) = conn.take_jobs()
    assert conn.take_jobs() == []  # each job is handed out once
    assert conn.waiting == 2  # the job and "C" behind it
    assert conn.receive_data(b"d\n") == b""  # held too, even if it could use a fast path
    assert conn.pending_jobs() == [job]
    assert run_job(conn, job) == b"SLOW1\nC\nD\n"
    assert conn.waiting == 0
    assert conn.receive_data(b"e\n") == b"E\n"


def test_jobs_finishing_out_of_order_are_released_in_order(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"slow1\nslow2\r\nmid\nslow3\nend\n") == b""
    first, second, third = conn.take_jobs()
    assert run_job(conn, third) == b""
    assert run_job(conn, second) == b""
    assert conn.pending_jobs() == [first]
    assert run_job(conn, first) == b"SLOW1\nSLOW2\r\nMID\nSLOW3\nEND\n"


def test_job_failed_gives_an_error_reply_in_place(conn: ServiceConnection) -> None:
    conn.receive_data(b"slow\r\nnext\n")
    (job,) = conn.take_jobs()
    assert conn.job_failed(job, "time limit exceeded (1 s)") == (
        b"error: time limit exceeded (1 s)\r\nNEXT\n")
    assert conn.errors == 1 and not conn.finished


def test_request_error_and_service_bugs_cost_one_line(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"a\nbad\nbug\r\nz\n") == (
        b"A\nerror: that is bad\nerror: internal error\r\nZ\n")
    assert conn.errors == 2 and not conn.closing


def test_line_too_long_closes_after_the_earlier_replies(conn: ServiceConnection) -> None:
    out = conn.receive_data(b"ok\nfine\n" + b"x" * 40 + b"\nnever\n")
    assert out == b"OK\nFINE\nerror: line too long (max 16 bytes)\n"
    assert conn.closing and conn.finished
    assert conn.receive_data(b"more\n") == b""
    assert conn.receive_eof() == b""


def test_line_too_long_reported_before_the_line_ends(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"a\n") == b"A\n"
    assert conn.receive_data(b"y" * 17) == b""  # may still become 16 bytes + CR LF
    assert conn.receive_data(b"y") == b"error: line too long (max 16 bytes)\n"
    assert conn.finished
    assert conn.buffered == 0


def test_line_too_long_waits_for_earlier_jobs(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"slow\nb\n" + b"x" * 40) == b""
    assert conn.closing and not conn.finished  # the job's reply must go out first
    (job,) = conn.take_jobs()
    assert run_job(conn, job) == b"SLOW\nB\nerror: line too long (max 16 bytes)\n"
    assert conn.finished


def test_eof_answers_a_final_partial_line(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"a\npart") == b"A\n"
    assert conn.buffered == 4
    assert conn.receive_eof() == b"PART\n"
    assert conn.finished
    assert conn.receive_eof() == b""
    assert conn.receive_data(b"late\n") == b""


def test_eof_without_partial_line(conn: ServiceConnection) -> None:
    conn.receive_data(b"a\n")
    assert conn.receive_eof() == b""
    assert conn.eof and conn.finished


def test_eof_waits_for_pending_jobs(conn: ServiceConnection) -> None:
    assert conn.receive_data(b"slow\ntail") == b""
    assert conn.receive_eof() == b""
    assert not conn.finished
    (job,) = conn.take_jobs()
    assert run_job(conn, job) == b"SLOW\nTAIL\n"
    assert conn.finished


def test_a_final_partial_line_can_be_offloaded() -> None:
    conn = ServiceConnection(SERVICE)
    conn.receive_data(b"slowpoke")
    assert conn.receive_eof() == b""
    (job,) = conn.take_jobs()
    assert run_job(conn, job) == b"SLOWPOKE\n"
    assert conn.finished


def test_stop_input_answers_what_was_read_and_takes_no_more(conn: ServiceConnection) -> None:
    conn.receive_data(b"slow\n")
    conn.stop_input()
    assert conn.receive_data(b"x\n") == b""
    assert not conn.finished
    (job,) = conn.take_jobs()
    assert run_job(conn, job) == b"SLOW\n"
    assert conn.finished


def test_byte_at_a_time_gives_the_same_replies(conn: ServiceConnection) -> None:
    stream = b"ab\r\nslow\n\nbad\ncd"
    out = b""
    for i in range(len(stream)):
        out += conn.receive_data(stream[i : i + 1])
        for job in conn.take_jobs():
            out += run_job(conn, job)
    out += conn.receive_eof()
    assert out == b"AB\r\nSLOW\n\nerror: that is bad\nCD\n"
    assert conn.lines == 5 and conn.finished


# -- the progress rule (idle timeouts against slowloris) ----------------------


def fed(conn: ServiceConnection, data: bytes) -> bool:
    """Whether feeding ``data`` made progress, as a serving mode sees it:
    it reads ``progressed`` after the feed and clears it."""
    conn.receive_data(data)
    progressed, conn.progressed = conn.progressed, False
    return progressed


def test_a_new_connection_counts_as_progress(conn: ServiceConnection) -> None:
    assert conn.progressed  # a full idle timeout for its first byte


def test_whole_lines_progress(conn: ServiceConnection) -> None:
    conn.progressed = False
    assert fed(conn, b"one\n")
    assert fed(conn, b"two\nthree\n")


def test_byte_by_byte_progress_at_the_first_byte_and_at_the_end(
        conn: ServiceConnection) -> None:
    conn.progressed = False
    steps = [fed(conn, bytes([byte])) for byte in b"abc\n"]
    assert steps == [True, False, False, True]  # begun, lengthened, lengthened, finished
    assert fed(conn, b"d")  # the next request begins
    assert conn.lines == 1


@pytest.mark.parametrize("service", [SERVICE, FAST], ids=["per-line", "block-fast-path"])
def test_a_trickled_long_line_does_not_progress(service: Service) -> None:
    conn = ServiceConnection(service, max_line=4096)
    conn.progressed = False
    assert fed(conn, b"x")
    assert not any(fed(conn, b"x" * 10) for _ in range(100))
    assert conn.buffered == 1001 and not conn.closing
    assert fed(conn, b"\n")  # ...until it is finished
    assert conn.lines == 1


def test_a_pipelined_block_progresses_even_ending_in_a_partial_line(
        conn: ServiceConnection) -> None:
    conn.progressed = False
    assert fed(conn, b"par")
    assert fed(conn, b"tial\n" + b"line\n" * 50 + b"begun")  # finishes, and begins another
    assert conn.lines == 51
    assert not fed(conn, b" still")
    assert fed(conn, b"\n")


def test_eof_progresses_when_it_ends_the_stream(conn: ServiceConnection) -> None:
    conn.progressed = False
    assert fed(conn, b"last")
    conn.receive_eof()  # answers the unterminated line: a request finished
    assert conn.progressed and conn.lines == 1


def test_an_overflowing_line_does_not_progress(conn: ServiceConnection) -> None:
    conn.progressed = False
    assert fed(conn, b"12345678")
    assert not fed(conn, b"9" * 10)  # past max_line (16): an error reply, not progress
    assert conn.closing
