"""The session engine without sockets: tcpkit.session.SessionConnection and Service checks."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from tcpkit.framers import Int32Prefixed, Lines, Netstrings
from tcpkit.service import Blocking, Offload, RequestError, Service
from tcpkit.session import Peer, Reply, Session
from tcpkit.session_connection import SessionConnection


class Counter(Session):
    """Counts its messages; QUIT says bye and closes; a few words misbehave on purpose."""

    def __init__(self) -> None:
        self.count = 0
        self.reasons: list[str] = []

    def connected(self) -> Reply:
        return [f"hello {self.peer.host}:{self.peer.port}", b"ready"]

    def received(self, message: bytes) -> Reply:
        self.count += 1
        if message == b"QUIT":
            self.close()
            return "bye"
        if message == b"none":
            return None
        if message == b"many":
            return ("a", b"b", "c")
        if message == b"bad":
            raise RequestError("bad word")
        if message == b"boom":
            raise ZeroDivisionError("boom")
        if message == b"number":
            return 42
        if message == b"badlist":
            return ["ok", 3]
        if message == b"slow":
            return Blocking(lambda: "slept")
        if message == b"async":
            return self._later()
        if message == b"offload":
            return Offload(str, (1,))
        return str(self.count)

    async def _later(self) -> Reply:
        return ["later", "done"]

    def disconnected(self, reason: str) -> None:
        self.reasons.append(reason)


COUNTER = Service("counter", 0, "counts", session=Counter)


def make(service: Service = COUNTER, **kwargs: Any) -> SessionConnection:
    return SessionConnection(service, peer=Peer("127.0.0.1", 5000), **kwargs)


def session_of(conn: SessionConnection) -> Counter:
    assert isinstance(conn.session, Counter)
    return conn.session


def test_connected_lines_come_first_and_state_is_per_connection() -> None:
    first, second = make(), make()
    assert first.start() == b"hello 127.0.0.1:5000\nready\n"
    second.start()
    assert first.receive_data(b"x\ny\r\n") == b"1\n2\r\n"
    assert second.receive_data(b"x\n") == b"1\n"
    assert first.lines == 2 and first.settled and not first.finished


def test_byte_by_byte_gives_the_same_replies() -> None:
    stream = b"a\nmany\r\nnone\nb\n"
    whole = make()
    whole.start()
    expected = whole.receive_data(stream)
    conn = make()
    conn.start()
    assert b"".join(conn.receive_data(bytes([b])) for b in stream) == expected
    assert expected == b"1\na\r\nb\r\nc\r\n4\n"


def test_quit_closes_after_its_reply_and_ignores_the_rest() -> None:
    conn = make()
    conn.start()
    assert conn.receive_data(b"one\nQUIT\nafter\n") == b"1\nbye\n"
    assert conn.closing and conn.finished
    assert conn.receive_data(b"more\n") == b""
    session = session_of(conn)
    assert session.count == 2
    assert conn.connection_lost() is None
    assert session.reasons == ["closed"]


def test_disconnected_runs_once_with_the_reason() -> None:
    conn = make()
    conn.start()
    session = session_of(conn)
    conn.receive_eof()
    assert conn.finished
    conn.connection_lost()
    conn.connection_lost("reset")
    assert session.reasons == ["eof"]
    other = make()
    other.start()
    session = session_of(other)
    other.connection_lost("idle")
    assert session.reasons == ["idle"]


def test_errors_and_bad_returns_cost_one_reply(caplog: pytest.LogCaptureFixture) -> None:
    conn = make()
    conn.start()
    with caplog.at_level(logging.ERROR, logger="tcpkit"):
        out = conn.receive_data(b"bad\nboom\nnumber\nbadlist\nok\n")
    assert out == (b"error: bad word\nerror: internal error\nerror: internal error\n"
                   b"error: internal error\n5\n")
    assert conn.errors == 4 and not conn.closing
    assert "ZeroDivisionError" in caplog.text  # the traceback, logged
    assert caplog.text.count("not a reply") == 2


def test_errors_are_written_in_the_services_syntax() -> None:
    def smtp(kind: str, message: str) -> bytes:
        return b"500 " + (b"line too long" if kind == "line too long" else message.encode())

    mail = Service("mail", 0, "", session=Counter, framer=Lines(newline=b"\r\n"), errors=smtp)
    conn = SessionConnection(mail, max_line=8)
    conn.start()
    assert conn.receive_data(b"bad\r\n" + b"x" * 20) == b"500 bad word\r\n500 line too long\r\n"
    assert conn.closing and conn.finished
    session = session_of(conn)
    conn.connection_lost()
    assert session.reasons == ["line too long"]


def test_a_broken_errors_function_falls_back_to_the_default() -> None:
    broken = Service("b", 0, "", session=Counter, errors=lambda kind, message: 1 / 0)  # type: ignore[arg-type,return-value]
    conn = SessionConnection(broken)
    conn.start()
    assert conn.receive_data(b"bad\n") == b"error: bad word\n"


def test_jobs_keep_request_order_and_hooks_take_turns() -> None:
    conn = make()
    conn.start()
    out = conn.receive_data(b"slow\nasync\nafter\noffload\n")
    assert out == b""  # all wait behind the first job
    jobs = conn.take_jobs()
    # The awaitable waits for the Blocking call's turn to end; Offload work has no
    # session state, so it starts at once.
    assert [job.kind for job in jobs] == ["blocking", "offload"]
    assert conn.waiting == 4 and not conn.settled
    assert conn.job_done(jobs[1], b"1") == b""
    assert conn.take_jobs() == []
    blocking = jobs[0].work
    assert isinstance(blocking, Blocking)
    assert conn.job_done(jobs[0], blocking()) == b"slept\n"
    (awaitable,) = conn.take_jobs()  # its turn now
    assert awaitable.kind == "awaitable"
    later = asyncio.run(awaitable.work)  # type: ignore[arg-type]
    assert conn.job_done(awaitable, later) == b"later\ndone\n3\n1\n"
    assert conn.settled and conn.waiting == 0


class Quitter(Session):
    """Every answer is async; ``QUIT`` closes from inside its coroutine."""

    async def received(self, message: bytes) -> Reply:
        if message == b"QUIT":
            self.close()
            return "bye"
        return message


def test_after_an_async_close_the_waiting_hooks_never_run() -> None:
    conn = make(Service("quitter", 0, "quits", session=Quitter))
    conn.start()
    conn.receive_data(b"a\nQUIT\nb\nc\n")
    (first,) = conn.take_jobs()
    assert conn.job_done(first, asyncio.run(first.work)) == b"a\n"  # type: ignore[arg-type]
    (quit_job,) = conn.take_jobs()
    waiting = [job.work for job in conn.turns.waiting]
    assert conn.job_done(quit_job, asyncio.run(quit_job.work)) == b"bye\n"  # type: ignore[arg-type]
    assert conn.take_jobs() == [] and conn.finished
    assert all(work.cr_frame is None for work in waiting)  # type: ignore[attr-defined]


def test_a_late_result_after_the_time_limit_does_not_start_a_second_turn() -> None:
    conn = make()
    conn.start()
    conn.receive_data(b"slow\nasync\nslow\n")
    (slow,) = conn.take_jobs()
    assert conn.job_failed(slow, "time limit exceeded (1 s)", "time_limit") == (
        b"error: time limit exceeded (1 s)\n")
    (awaitable,) = conn.take_jobs()
    assert conn.job_done(slow, "late") == b"" and conn.take_jobs() == []
    assert conn.job_done(awaitable, asyncio.run(awaitable.work)) == (  # type: ignore[arg-type]
        b"later\ndone\n")
    assert [job.kind for job in conn.take_jobs()] == ["blocking"]


def test_a_failed_job_is_one_error_reply_in_place() -> None:
    conn = make()
    conn.start()
    conn.receive_data(b"slow\nx\n")
    (job,) = conn.take_jobs()
    assert conn.job_failed(job, "time limit exceeded (1 s)", "time_limit") == (
        b"error: time limit exceeded (1 s)\n2\n")
    assert conn.job_done(job, "late") == b""  # the thread finished after all: ignored
    assert conn.errors == 1


def test_a_job_returning_a_non_reply_is_an_internal_error() -> None:
    conn = make()
    conn.start()
    conn.receive_data(b"slow\n")
    (job,) = conn.take_jobs()
    assert conn.job_done(job, object()) == b"error: internal error\n"


def test_eof_answers_the_last_line_then_finishes_after_jobs() -> None:
    conn = make()
    conn.start()
    conn.receive_data(b"slow\n")
    assert conn.receive_eof() == b""
    assert conn.receive_data(b"late\n") == b""
    assert not conn.finished
    (job,) = conn.take_jobs()
    assert conn.job_done(job, "z") == b"z\n"
    assert conn.finished
    tail = make()
    tail.start()
    assert tail.receive_eof() == b""
    other = make()
    other.start()
    other.receive_data(b"pa")
    assert other.receive_eof() == b"1\n"


def test_send_from_another_thread_wakes_the_driver() -> None:
    conn = make()
    conn.start()
    woken = threading.Event()
    conn.wakeup = woken.set
    session = session_of(conn)
    thread = threading.Thread(target=session.send, args=("one", b"two"))
    thread.start()
    thread.join(10)
    assert woken.wait(10)
    assert conn.data_to_send() == b"one\ntwo\n"
    assert conn.data_to_send() == b""


def test_close_from_another_thread_applies_on_the_drivers_side() -> None:
    conn = make()
    conn.start()
    woken = threading.Event()
    conn.wakeup = woken.set
    session_of(conn).send("last")
    woken.clear()
    thread = threading.Thread(target=session_of(conn).close)
    thread.start()
    thread.join(10)
    assert woken.wait(10)
    assert not conn.closing  # only the driver's thread changes the state...
    assert not conn.finished  # ...and a queued line must still go out
    assert conn.data_to_send() == b"last\n"
    assert conn.closing and conn.finished


def test_send_is_framed_by_the_services_framer() -> None:
    for framer, expected in ((Netstrings(), b"2:hi,"), (Int32Prefixed(), b"\0\0\0\2hi")):
        conn = SessionConnection(Service("f", 0, "", session=Counter, framer=framer))
        conn.start()
        session_of(conn).send("hi")
        assert conn.data_to_send() == expected


def test_send_after_the_connection_is_gone_is_ignored() -> None:
    conn = make()
    conn.start()
    session = session_of(conn)
    conn.connection_lost("reset")
    session.send("nobody")
    assert conn.data_to_send() == b""


def test_unsent_output_past_the_cap_drops_the_connection() -> None:
    conn = make(max_unsent=1000)
    conn.start()
    calls = []
    conn.wakeup = lambda: calls.append(1)
    held = 600
    conn.backlog = lambda: held  # what the transport still holds counts too
    session = session_of(conn)
    session.send("x" * 300)
    assert conn.dropped is None
    session.send("y" * 300)
    assert conn.dropped == "send buffer full"
    assert conn.data_to_send() == b""  # the queue is freed at once
    session.send("z")
    assert conn.data_to_send() == b"" and len(calls) == 2
    assert conn.receive_data(b"x\n") == b""
    conn.connection_lost()
    assert session.reasons == ["send buffer full"]


def test_netstring_service_with_a_stateless_answer() -> None:
    service = Service("rev", 0, "", answer=lambda m: m[::-1], framer=Netstrings())
    assert service.uses_sessions
    conn = SessionConnection(service, max_line=5)
    assert conn.start() == b""
    assert conn.receive_data(b"3:abc,0:,") == b"3:cba,0:,"
    assert conn.receive_data(b"6:abcdef,") == b"37:error: message too long (max 5 bytes),"
    assert conn.finished


def test_malformed_input_closes_after_the_replies_so_far() -> None:
    conn = SessionConnection(Service("rev", 0, "", session=Counter, framer=Netstrings()))
    conn.start()
    assert conn.receive_data(b"1:a,x") == b"1:1,26:error: malformed netstring,"
    assert conn.closing and conn.finished


def test_async_def_answer_for_a_stateless_service() -> None:
    async def answer(line: bytes) -> bytes:
        return line.upper()

    service = Service("up", 0, "", answer=answer)
    assert service.uses_sessions
    conn = SessionConnection(service)
    conn.start()
    conn.receive_data(b"hi\r\n")
    (job,) = conn.take_jobs()
    assert conn.job_done(job, asyncio.run(job.work)) == b"HI\r\n"  # type: ignore[arg-type]


def test_hooks_that_raise_in_connected_or_disconnected() -> None:
    class Broken(Session):
        def connected(self) -> Reply:
            raise RuntimeError("no")

        def received(self, message: bytes) -> Reply:
            return message

        def disconnected(self, reason: str) -> None:
            raise RuntimeError("no")

    conn = SessionConnection(Service("b", 0, "", session=Broken))
    assert conn.start() == b"error: internal error\n"
    assert conn.receive_data(b"x\n") == b"x\n"
    assert conn.connection_lost("eof") is None


def test_a_session_that_cannot_be_built_gets_one_error_and_is_closed() -> None:
    class NeedsArgs(Session):
        def __init__(self, x: int) -> None:
            self.x = x

        def received(self, message: bytes) -> Reply:
            return message

    conn = SessionConnection(Service("b", 0, "", session=NeedsArgs))
    assert conn.start() == b"error: internal error\n"
    assert conn.finished


def test_async_disconnected_is_handed_to_the_driver() -> None:
    seen: list[str] = []

    class Async(Session):
        def received(self, message: bytes) -> Reply:
            return message

        async def disconnected(self, reason: str) -> None:
            seen.append(reason)

    conn = SessionConnection(Service("a", 0, "", session=Async))
    conn.start()
    pending = conn.connection_lost("drain")
    assert pending is not None
    asyncio.run(pending)  # type: ignore[arg-type]
    assert seen == ["drain"]


@pytest.mark.parametrize("kwargs, error", [
    ({}, TypeError),
    ({"answer": bytes.upper, "session": Counter}, TypeError),
    ({"answer": 3}, TypeError),
    ({"session": int}, TypeError),
    ({"session": Session}, TypeError),  # received() not defined
    ({"session": Counter, "framer": "lines"}, TypeError),
    ({"session": Counter, "errors": "x"}, TypeError),
    ({"session": Counter, "answer_block": bytes.upper}, TypeError),
])
def test_invalid_services_are_refused_when_built(kwargs: dict[str, Any],
                                                 error: type[Exception]) -> None:
    with pytest.raises(error):
        Service("bad", 1, "", **kwargs)


def test_bad_port_is_refused() -> None:
    with pytest.raises(ValueError):
        Service("bad", 70000, "", session=Counter)


def test_stateless_service_keeps_the_fast_path() -> None:
    plain = Service("plain", 0, "", answer=bytes.upper)
    assert not plain.uses_sessions
    assert Service("s", 0, "", session=Counter, shared_state=True).shared_state


def test_the_line_sink_is_send_of_one_line_with_the_same_cap_and_wake_ups() -> None:
    # What a hub calls for every member: framed like send(), one wake-up per batch,
    # dropped past the cap, a no-op once the connection is gone.
    conn = SessionConnection(Service("f", 0, "", session=Counter, framer=Netstrings()),
                             max_unsent=1000)
    conn.start()
    calls = []
    conn.wakeup = lambda: calls.append(1)
    held = 600
    conn.backlog = lambda: held
    sink = session_of(conn).line_sink()
    sink(b"hi")
    sink(b"ho")
    assert len(calls) == 1  # the second line rides on the first one's wake-up
    assert conn.data_to_send() == b"2:hi,2:ho,"
    sink(b"x" * 300)
    assert conn.dropped is None and len(calls) == 2
    sink(b"y" * 300)
    assert conn.dropped == "send buffer full" and len(calls) == 3  # woken to drop it
    assert conn.data_to_send() == b""
    sink(b"z")
    assert conn.data_to_send() == b"" and len(calls) == 3
    gone = make()
    gone.start()
    session = session_of(gone)
    late_sink = session.line_sink()
    gone.connection_lost("reset")
    late_sink(b"nobody")
    session.line_sink()(b"nobody either")  # asked after the connection is gone
    assert gone.data_to_send() == b""


# -- the progress rule (idle timeouts against slowloris), as in ServiceConnection ----


@pytest.mark.parametrize(("framer", "message", "head"), [
    (Lines(), b"hello\n", 1), (Netstrings(), b"5:hello,", 3),
    (Int32Prefixed(), b"\0\0\0\5hello", 5)])
def test_progress_is_a_message_begun_or_finished(framer: Any, message: bytes,
                                                 head: int) -> None:
    """``head``: the bytes that begin a message (its header and first payload byte)."""
    conn = SessionConnection(Service("f", 0, "", session=Counter, framer=framer))
    conn.start()
    assert conn.progressed  # a new connection: a full idle timeout for its first byte
    conn.progressed = False
    conn.receive_data(message[:head])
    assert conn.progressed  # begun
    steps = []
    for index in range(head, len(message)):  # the rest, byte by byte
        conn.progressed = False
        conn.receive_data(message[index:index + 1])
        steps.append(conn.progressed)
    assert steps == [False] * (len(message) - head - 1) + [True]  # lengthened ... finished
    conn.progressed = False
    conn.receive_data(message * 3 + message[:head])  # a pipelined block: progress
    assert conn.progressed and conn.lines == 4
    conn.progressed = False
    conn.receive_data(message[head:head + 1])  # only lengthens the unfinished one
    assert not conn.progressed
