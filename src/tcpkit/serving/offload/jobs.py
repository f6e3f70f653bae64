"""The job protocol: what an offloaded request's outcome is, wherever it ran.

Every executor (the local pool, a Dask cluster) and every serving mode speak
this one vocabulary, so an outcome means the same thing everywhere:

* in the worker, :func:`run_job` turns a job's outcome into a picklable
  ``(kind, value)`` pair (a worker must never die of a request's exception);
* in the server, :func:`reply_from` turns that pair back into the reply or the
  exception it stands for (RequestError, TimeLimitExceeded, WorkerCrashed);
* and :func:`finish_job` turns the reply or exception into the connection's
  next replies and the metrics, the same way in the async and blocking modes.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Hashable
from typing import Any, Protocol

from tcpkit.connection import Job
from tcpkit.errors import Error
from tcpkit.service import Offload, RequestError
from tcpkit.serving.observe.events import Observer

log = logging.getLogger("tcpkit")


class TimeLimitExceeded(Error):
    """A job ran past the executor's time limit and was stopped."""

    @classmethod
    def after(cls, time_limit: float) -> TimeLimitExceeded:
        """The one wording of a time-limit error (factor, sessions' jobs, every mode)."""
        return cls(f"time limit exceeded ({time_limit:g} s)")


class WorkerCrashed(Error):
    """A worker process died while running a job."""


def run_job(work: Offload) -> tuple[str, Any]:
    """Run one job, turning its outcome into a picklable ``(kind, value)`` pair."""
    try:
        return ("ok", work.func(*work.args))
    except RequestError as exc:
        return ("request-error", str(exc))
    except MemoryError:
        return ("request-error", "out of memory")
    except Exception:
        return ("crash", traceback.format_exc(limit=5))


def reply_from(kind: str, value: Any, time_limit: float) -> bytes:
    """The reply for a job's ``(kind, value)`` outcome, or the exception it stands for."""
    if kind == "ok":
        return bytes(value)
    if kind == "request-error":
        raise RequestError(value)
    if kind == "time-limit":
        raise TimeLimitExceeded.after(time_limit)
    if kind == "died":
        raise WorkerCrashed(value)
    log.error("a worker failed on a request:\n%s", value)
    raise RequestError("internal error")


def job_failure(exc: Exception) -> tuple[str, str]:
    """The ``error:`` message and the metrics kind for offloaded work that raised ``exc``.

    An unexpected exception (a bug in an executor) costs one request, never a
    hung connection: it is logged and answered ``error: internal error``.
    """
    if isinstance(exc, RequestError):
        return str(exc), "request"
    if isinstance(exc, TimeLimitExceeded):
        return str(exc), "time_limit"
    if isinstance(exc, WorkerCrashed):
        return str(exc), "worker_crashed"
    log.error("offloaded work failed", exc_info=exc)
    return "internal error", "internal"


class JobReplies(Protocol):
    """What a connection does with a finished job (ServiceConnection, SessionConnection)."""

    def job_done(self, job: Job, reply: Any, /) -> bytes: ...

    def job_failed(self, job: Job, message: str, kind: str = ..., /) -> bytes: ...


def finish_job(conn: JobReplies, job: Job, outcome: Any,
               metered: Observer | None, service: str, started: float) -> bytes:
    """A job ended with ``outcome`` (its reply, or what its executor raised):
    return the replies now due on ``conn``, and report the figures to ``metered``.

    A reply is bytes for a stateless service's Offload job, any Reply for a
    session's job; an exception becomes an error reply of its kind.

    ``started`` is the ``time.perf_counter()`` reading when the job began; it
    is read only when metered (without an observer no clock is read).  The
    async and blocking modes both call this, so a finished job counts the same
    in every mode: one answered request, its reply bytes and lines, its
    latency, and on failure one error of the kind :func:`job_failure` names.
    """
    if isinstance(outcome, Exception):
        message, failure = job_failure(outcome)
        out = conn.job_failed(job, message, failure)
    else:
        failure = None
        out = conn.job_done(job, outcome)
    if metered is not None:
        metered.traffic(service, 0, len(out), 0, out.count(b"\n"), 1,
                        time.perf_counter() - started)
        if failure is not None:
            metered.failed(service, failure)
    return out


def count_down(counts: dict[Hashable, int], key: Hashable) -> None:
    """Decrement ``counts[key]``, dropping the key at zero (the dict stays small)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
