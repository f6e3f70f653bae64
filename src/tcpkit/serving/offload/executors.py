"""Where offloaded work runs: the local worker pool, or a Dask cluster.

Both have the same two coroutines, so a serving mode holds "an executor" and
does not care which: ``await executor.run(work, owner=connection)`` returns the
reply's bytes (or raises RequestError, TimeLimitExceeded, WorkerCrashed;
cancelling the call stops the work), and ``await executor.close()``.

:func:`make_executor` is the one place that reads ``--executor``: the async
mode calls it directly, the blocking modes through
:class:`~tcpkit.serving.offload.bridge.OffloadBridge`, so every mode offloads
to the same place.  Its workers preload what the served services declare
(:func:`preload_for`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Hashable, Iterable
from typing import Protocol

from tcpkit.service import Offload, Service
from tcpkit.serving.config import Limits


class Executor(Protocol):
    async def run(self, work: Offload, owner: Hashable | None = None) -> bytes: ...

    async def close(self) -> None: ...


def uses_local_pool(url: str | None) -> bool:
    """Whether ``--executor`` means this machine's own worker processes."""
    return url in (None, "", "local")


def check_executor(url: str | None) -> None:
    """Raise ValueError for an ``--executor`` value no executor understands."""
    if uses_local_pool(url):
        return
    assert url is not None
    if not url.startswith("dask://") or ":" not in url[len("dask://"):]:
        raise ValueError(f"--executor must be 'local' or dask://HOST:PORT (got {url!r})")
    if importlib.util.find_spec("distributed") is None:
        raise ValueError("--executor dask:// needs the dask extra: pip install 'tcpkit[dask]'")


def preload_for(services: Iterable[Service]) -> tuple[str, ...]:
    """The modules workers import before their first job: every service's
    :attr:`~tcpkit.service.Service.preload`, in order, each once."""
    return tuple(dict.fromkeys(module for service in services for module in service.preload))


def make_executor(limits: Limits, preload: Iterable[str] = ()) -> Executor:
    """The executor ``limits.executor`` names (default: a local WorkerPool).

    Nothing starts here: the pool starts its workers, the Dask executor its
    client, on the first job (so this is safe before a fork, and free for a
    server that never offloads).
    """
    url = limits.executor
    if uses_local_pool(url):
        from tcpkit.serving.offload.pool import WorkerPool  # multiprocessing: when used

        return WorkerPool(limits.pool_size, limits.time_limit, preload=tuple(preload))
    assert url is not None
    from tcpkit.serving.offload.dask import DaskExecutor

    return DaskExecutor(url, limits.time_limit, preload=tuple(preload))


def import_before_fork(limits: Limits) -> None:
    """Import, once in a forking parent, the client library each child's executor
    would otherwise import for itself (``distributed`` takes half a second).

    Importing starts no thread, loop or connection, so the children stay
    fork-safe: each still makes its own client, after its fork.
    """
    if not uses_local_pool(limits.executor) and importlib.util.find_spec("distributed"):
        importlib.import_module("distributed")
