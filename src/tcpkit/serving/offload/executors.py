"""Where offloaded work runs: the local worker pool, or a Dask cluster.

Both have the same two coroutines, so a serving mode holds "an executor" and
does not care which: ``await executor.run(work, owner=connection)`` returns the
reply's bytes (or raises RequestError, TimeLimitExceeded, WorkerCrashed;
cancelling the call stops the work), and ``await executor.close()``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable
from typing import Protocol

from tcpkit.service import Offload
from tcpkit.serving.config import Limits
from tcpkit.serving.offload.pool import WorkerPool

SCHEMES = ("dask://", "tcp://", "tls://")


class Executor(Protocol):
    async def run(self, work: Offload, owner: Hashable | None = None) -> bytes: ...

    async def close(self) -> None: ...


def check_executor(url: str | None) -> None:
    """Raise ValueError for an ``--executor`` value no executor understands."""
    if url in (None, "", "local"):
        return
    assert url is not None
    if not url.startswith("dask://") or ":" not in url[len("dask://"):]:
        raise ValueError(f"--executor must be 'local' or dask://HOST:PORT (got {url!r})")
    if importlib.util.find_spec("distributed") is None:
        raise ValueError("--executor dask:// needs the dask extra: pip install 'tcpkit[dask]'")


def make_executor(limits: Limits) -> Executor:
    """The executor ``limits.executor`` names (default: a local WorkerPool)."""
    url = limits.executor
    if url in (None, "", "local"):
        return WorkerPool(limits.pool_size, limits.time_limit)
    assert url is not None
    from tcpkit.serving.offload.dask import DaskExecutor

    return DaskExecutor(url, limits.time_limit)
