"""Serve services from Python, in one call: ``tcpkit.serve`` and ``tcpkit.serve_async``.

What ``tcpkit serve`` does on the command line, for a program::

    import tcpkit
    from shout import SERVICE

    tcpkit.serve(SERVICE, listen="127.0.0.1:7802", mode="thread", max_line=4096)

``serve`` blocks like ``socketserver``'s ``serve_forever``: SIGINT or SIGTERM
stops accepting, finishes the requests already read (up to ``drain_timeout``)
and returns.  ``await tcpkit.serve_async(...)`` is the same for a program
already running an event loop (async mode); it returns when a signal stops the
server, and cancelling it drains the same way (a second cancel cuts the clients
off, as a second signal does).

Settings are keyword arguments named as the command line's options are
(``max_connections``, ``idle_timeout``, ``max_line``, ``drain_timeout``,
``time_limit``, ``max_digits``, ...: every field of
:class:`~tcpkit.serving.config.Limits` and of :class:`~tcpkit.service.Options`).
A misspelt one is a TypeError that names it, a bad value a ValueError: checked
before any socket is opened.  This module only turns arguments into the serving
layer's objects; :func:`tcpkit.serving.run.run` serves them, for the CLI too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tcpkit import logs
from tcpkit.endpoints import Endpoint, parse_endpoint
from tcpkit.service import Options, Service
from tcpkit.serving.config import MODES, Limits

if typing.TYPE_CHECKING:
    from tcpkit.serving.guards.tls import ServerTLS
    from tcpkit.serving.modes.aio import AsyncServer

log = logging.getLogger("tcpkit")

# An endpoint: "HOST:PORT", a port number, or an Endpoint.
EndpointLike = str | int | Endpoint
# ``listen``: one endpoint or several for one service, or per service name.
Listen = EndpointLike | Sequence[EndpointLike] | Mapping[str, Any] | None

__all__ = ["serve", "serve_async"]


def serve(services: Service | Iterable[Service], listen: Listen = None, mode: str = "async",
          workers: int = 1, *, tls_cert: str | None = None, tls_key: str | None = None,
          **settings: Any) -> None:
    """Serve ``services`` until SIGINT/SIGTERM, then drain and return.

    ``listen`` is an endpoint (``"127.0.0.1:7802"``, ``"[::1]:0"``,
    ``"unix:/run/shout.sock"``, a port number), a list of them, or for several
    services a ``{service_name: endpoint or list}`` mapping; a service given
    none listens on its default port on every interface, as ``tcpkit serve``
    does.  ``mode`` is one of ``async``, ``thread``, ``fork``, ``iterative``;
    ``workers`` processes serve the same sockets.  ``tls_cert``/``tls_key``
    serve over TLS.  Must run on the main thread: that is where Python delivers
    the signals that stop it (from another thread, use ``serve_async`` on a
    loop there, or :func:`tcpkit.testing.running`).

    Raises ListenError (a port in use...), TLSError, TypeError/ValueError for
    bad arguments — all but the last two are :class:`tcpkit.Error`.
    """
    from tcpkit.serving.run import run, shared_state_refusal

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("tcpkit.serve() stops on SIGINT/SIGTERM, which only the main "
                           "thread receives; use serve_async() or tcpkit.testing.running()")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number of at least 1 (got {workers!r})")
    limits, options = split_settings(settings)
    plan = listen_plan([s.configured(options) for s in as_services(services)], listen)
    refusal = shared_state_refusal([service for service, _ in plan], mode, workers,
                                   limits.pubsub)
    if refusal is not None:
        raise ValueError(refusal)
    tls = _server_tls(tls_cert, tls_key)
    _log_by_default()
    run(plan, mode, limits, tls=tls, workers=workers)


async def serve_async(services: Service | Iterable[Service], listen: Listen = None, *,
                      tls_cert: str | None = None, tls_key: str | None = None,
                      **settings: Any) -> None:
    """Serve ``services`` on the running event loop (async mode) until stopped.

    Arguments as for :func:`serve`.  SIGINT/SIGTERM stop it (on the main
    thread; its handlers are removed again when it returns).  Cancelling the
    task drains too, then re-raises CancelledError.
    """
    from tcpkit.serving.modes.aio import AsyncServer
    from tcpkit.serving.run import opened

    limits, options = split_settings(settings)
    plan = listen_plan([s.configured(options) for s in as_services(services)], listen)
    tls = _server_tls(tls_cert, tls_key)
    _log_by_default()
    with opened(plan, tls) as listeners:
        server = AsyncServer(listeners, limits)
        try:
            await _until_drained(server)
        finally:
            _remove_signal_handlers()
            log.info("%s", server.stats.summary(), extra={"event": "stopped"})


async def _until_drained(server: AsyncServer) -> None:
    """Await ``server.serve()``; a cancel asks it to stop (graceful, then abrupt)
    and waits for it to finish before passing the cancel on."""
    task = asyncio.ensure_future(server.serve())
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
            server.stop()
    if cancelled:
        raise asyncio.CancelledError
    task.result()


def _remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(RuntimeError, ValueError):
            loop.remove_signal_handler(sig)


def as_services(services: Service | Iterable[Service]) -> list[Service]:
    """``services`` as a list of distinct-named Services (TypeError/ValueError if not)."""
    found = [services] if isinstance(services, Service) else list(services)
    if not found:
        raise ValueError("no service to serve")
    for service in found:
        if not isinstance(service, Service):
            raise TypeError(f"not a tcpkit.Service: {service!r}")
    names = [service.name for service in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two services share a name: {', '.join(names)}")
    return found


def listen_plan(services: Sequence[Service], listen: Listen) -> list[tuple[Service, Endpoint]]:
    """Pair each service with its endpoints (its default port when given none)."""
    by_name = {service.name: service for service in services}
    explicit: dict[str, list[Endpoint]] = {name: [] for name in by_name}
    if isinstance(listen, Mapping):
        for name, where in listen.items():
            if name not in by_name:
                raise ValueError(f"listen names {name!r}, which is not being served "
                                 f"(serving: {', '.join(by_name)})")
            explicit[name] = _endpoints(where)
    elif listen is not None:
        if len(services) > 1:
            raise ValueError("with several services, give listen={service_name: endpoint}")
        explicit[services[0].name] = _endpoints(listen)
    return [(by_name[name], endpoint) for name in by_name
            for endpoint in explicit[name] or [Endpoint(port=by_name[name].port)]]


def _endpoints(where: Any) -> list[Endpoint]:
    items = where if isinstance(where, list | tuple) else [where]
    if not items:
        raise ValueError("listen: an empty list of endpoints")
    return [_endpoint(item) for item in items]


def _endpoint(item: Any) -> Endpoint:
    if isinstance(item, Endpoint):
        return item
    if isinstance(item, int) and not isinstance(item, bool):
        return parse_endpoint(str(item))  # the same range check as "PORT"
    if isinstance(item, str):
        return parse_endpoint(item)
    raise TypeError(f"listen: not an endpoint: {item!r} (try 'HOST:PORT' or a port number)")


def split_settings(settings: Mapping[str, Any]) -> tuple[Limits, Options]:
    """Keyword settings as Limits and Options; TypeError names an unknown one."""
    limit_names = {f.name for f in dataclasses.fields(Limits)}
    option_names = {f.name for f in dataclasses.fields(Options)} - {"extra"}
    for name in settings:
        if name not in limit_names | option_names:
            known = ", ".join(sorted(limit_names | option_names))
            raise TypeError(f"unknown setting {name!r} (settings: {known})")
    hints = {**typing.get_type_hints(Limits), **typing.get_type_hints(Options)}
    for name, value in settings.items():
        _check_value(name, value, hints[name])
    if settings.get("executor") is not None:
        from tcpkit.serving.offload.executors import check_executor

        check_executor(settings["executor"])
    limits = Limits(**{k: v for k, v in settings.items() if k in limit_names})
    options = Options(**{k: v for k, v in settings.items() if k in option_names})
    return limits, options


def _check_value(name: str, value: Any, hint: Any) -> None:
    """A setting's value matches its field: None only where the field allows it,
    numbers above zero (the command line's rule for every numeric option)."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) not in allowed:
            raise ValueError(f"{name} cannot be None")
        return
    if str in allowed:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string (got {value!r})")
        return
    numeric = float in allowed or int in allowed
    whole_only = float not in allowed
    if (not numeric or isinstance(value, bool) or not isinstance(value, int | float)
            or (whole_only and not isinstance(value, int))):
        kind = "a whole number" if whole_only else "a number"
        raise TypeError(f"{name} must be {kind} (got {value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be above 0 (got {value!r})")


def _server_tls(cert: str | None, key: str | None) -> ServerTLS | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("tls_cert and tls_key must be given together")
    from tcpkit.serving.guards.tls import ServerTLS

    return ServerTLS(cert, key)  # raises TLSError for unusable files


def _log_by_default() -> None:
    """Show the access log on stderr, as ``tcpkit serve`` does — unless the
    program has set up logging itself (the rule of ``logging.basicConfig``)."""
    if not logging.getLogger("tcpkit").handlers and not logging.getLogger().handlers:
        logs.configure()
