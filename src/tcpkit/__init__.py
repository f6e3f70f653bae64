"""tcpkit: line-oriented TCP services the IO::Socket way.

The pieces, from the bottom up:

* :mod:`tcpkit.framing` and :mod:`tcpkit.connection` — sans-IO line protocol;
* :mod:`tcpkit.service` and :mod:`tcpkit.services` — what services answer;
* :mod:`tcpkit.session`, :mod:`tcpkit.session_connection` and
  :mod:`tcpkit.framers` — per-connection services and their sans-IO engine;
* :mod:`tcpkit.serving` — the serving models that move the bytes;
* :mod:`tcpkit.sockets` and :mod:`tcpkit.client` — IO::Socket::INET-like
  sockets and the clients built on them;
* :mod:`tcpkit.api` — ``serve``/``serve_async``: serving from Python in one call;
* :mod:`tcpkit.testing` — any service on an ephemeral port, for tests;
  :mod:`tcpkit.dialog` — a session's dialog without a socket, for tests;
* :mod:`tcpkit.hub` — rooms for sessions, in-process or through Redis.

Every exception tcpkit raises for a user to catch derives from :class:`Error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpkit.api import serve, serve_async
    from tcpkit.client import (
        AsyncFactorClient,
        AsyncLineClient,
        AsyncReverseClient,
        ConnectionClosed,
        FactorClient,
        LineClient,
        ReverseClient,
        ServerError,
    )
    from tcpkit.errors import Error
    from tcpkit.factoring.engine import factorize
    from tcpkit.service import Blocking, Offload, Options, RequestError, Service
    from tcpkit.serving.listeners import ListenError
    from tcpkit.session import Peer, Session
    from tcpkit.sockets import ConnectError, INETSocket

# Where each public name lives.  They are imported on first use (PEP 562), so
# that ``import tcpkit.anything`` does not load the clients, asyncio and the
# rest: a fork-mode server copies every page it holds into each child's page
# tables, and a smaller process forks faster.  The factor engine (FLINT,
# ~10 MB) is one of them: a server that only reverses lines never carries it.
_HOMES = {
    "serve": "tcpkit.api", "serve_async": "tcpkit.api",
    "AsyncFactorClient": "tcpkit.client", "AsyncLineClient": "tcpkit.client",
    "AsyncReverseClient": "tcpkit.client", "ConnectionClosed": "tcpkit.client",
    "FactorClient": "tcpkit.client", "LineClient": "tcpkit.client",
    "ReverseClient": "tcpkit.client", "ServerError": "tcpkit.client",
    "Error": "tcpkit.errors",
    "factorize": "tcpkit.factoring.engine",
    "Blocking": "tcpkit.service", "Offload": "tcpkit.service", "Options": "tcpkit.service",
    "RequestError": "tcpkit.service", "Service": "tcpkit.service",
    "ListenError": "tcpkit.serving.listeners",
    "Peer": "tcpkit.session", "Session": "tcpkit.session",
    "ConnectError": "tcpkit.sockets", "INETSocket": "tcpkit.sockets",
}

__version__ = "0.1.0"

__all__ = [
    "AsyncFactorClient",
    "AsyncLineClient",
    "AsyncReverseClient",
    "Blocking",
    "ConnectError",
    "ConnectionClosed",
    "Error",
    "FactorClient",
    "INETSocket",
    "LineClient",
    "ListenError",
    "Offload",
    "Options",
    "Peer",
    "RequestError",
    "ReverseClient",
    "ServerError",
    "Service",
    "Session",
    "__version__",
    "factorize",
    "serve",
    "serve_async",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tcpkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
