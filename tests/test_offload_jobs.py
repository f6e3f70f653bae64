"""The job protocol, sans-IO: a finished job's replies and metrics, as every mode reports them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tcpkit.connection import ServiceConnection
from tcpkit.service import RequestError
from tcpkit.services.factor import SERVICE
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.offload.jobs import (
    TimeLimitExceeded,
    WorkerCrashed,
    finish_job,
    reply_from,
    run_job,
)

BIG = 2**64 + 1  # offloaded: 274177 67280421310721


class Recorder(Observer):
    measures_traffic = True

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def traffic(self, service: str, received: int, sent: int, lines: int, replies: int,
                answered: int, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("traffic", service, received, sent, lines, replies, answered))

    def failed(self, service: str, kind: str, count: int = 1) -> None:
        self.events.append(("failed", service, kind, count))


def one_job(payload: bytes) -> tuple[ServiceConnection, Any, bytes]:
    conn = ServiceConnection(SERVICE)
    replies = conn.receive_data(payload)
    [job] = conn.take_jobs()
    return conn, job, replies


def test_a_reply_releases_the_held_replies_in_order_and_counts_one_answer() -> None:
    conn, job, before = one_job(b"%d\n42\n" % BIG)
    assert before == b""  # 42's reply waits behind the job
    observer = Recorder()
    out = finish_job(conn, job, b"274177 67280421310721", observer, "factor",
                     time.perf_counter())
    assert out == b"274177 67280421310721\n2 3 7\n"
    assert observer.events == [("traffic", "factor", 0, len(out), 0, 2, 1)]
    assert conn.errors == 0


@pytest.mark.parametrize(("raised", "reply", "kind"), [
    (TimeLimitExceeded("time limit exceeded (1 s)"), b"error: time limit exceeded (1 s)\n",
     "time_limit"),
    (WorkerCrashed("worker process died"), b"error: worker process died\n", "worker_crashed"),
    (RequestError("factor cluster unavailable"), b"error: factor cluster unavailable\n",
     "request"),
    (ValueError("a bug in an executor"), b"error: internal error\n", "internal"),
])
def test_a_failure_is_an_error_reply_and_one_error_of_its_kind(
        raised: Exception, reply: bytes, kind: str) -> None:
    conn, job, _ = one_job(b"%d\n" % BIG)
    observer = Recorder()
    assert finish_job(conn, job, raised, observer, "factor", time.perf_counter()) == reply
    assert observer.events == [("traffic", "factor", 0, len(reply), 0, 1, 1),
                               ("failed", "factor", kind, 1)]
    assert conn.errors == 1


def test_unmetered_reports_nothing() -> None:
    conn, job, _ = one_job(b"%d\n" % BIG)
    assert finish_job(conn, job, TimeLimitExceeded("t"), None, "factor", 0.0) == b"error: t\n"


def test_outcomes_cross_the_pipe_and_come_back_as_replies_or_exceptions() -> None:
    from tcpkit.service import Offload
    from tcpkit.services.factor import factor_digits

    assert reply_from(*run_job(Offload(factor_digits, (False, b"%d" % BIG))),
                      time_limit=1) == b"274177 67280421310721"
    with pytest.raises(TimeLimitExceeded, match=r"\(2 s\)"):
        reply_from("time-limit", "", time_limit=2)
    with pytest.raises(WorkerCrashed):
        reply_from("died", "worker process died", time_limit=2)
    with pytest.raises(RequestError, match="internal error"):
        reply_from(*run_job(Offload(factor_digits, ("not", "digits"))), time_limit=1)
