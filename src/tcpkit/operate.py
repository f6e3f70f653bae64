"""The operator's side of ``tcpkit serve``: TLS, metrics, names, activation, inetd.

The options themselves are in :mod:`tcpkit.serve_options`; :meth:`Operation.from_args`
checks what argparse cannot — how they combine, the certificate, the metrics
endpoint — before anything is opened, so ``tcpkit serve --check-config`` can
validate a configuration without serving it, and every mistake is one clear
line and exit status 2.  The rest
sets up what the serving mode is given: the certificate, the observer (access
log, reverse-DNS names, Prometheus metrics) and the sockets (opened, inherited
from systemd, or the one inetd passed on stdin).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from tcpkit.endpoints import Endpoint, EndpointError, parse_endpoint
from tcpkit.errors import Error
from tcpkit.service import Service
from tcpkit.serving.config import Listener
from tcpkit.serving.guards.privileges import Credentials, PrivilegeError, resolve
from tcpkit.serving.guards.tls import ServerTLS, TLSError
from tcpkit.serving.listeners import ListenError
from tcpkit.serving.observe.events import Observer, ObserverGroup


class OptionError(Error):
    """A bad option or combination of options (exit 2); the message says which."""


@dataclass
class Operation:
    """The checked operator options of one ``tcpkit serve`` run."""

    tls: ServerTLS | None
    metrics: Endpoint | None
    resolve_names: bool
    inetd: bool
    activated: bool  # LISTEN_FDS is set for this process
    credentials: Credentials | None = None  # whom to become once everything is open
    pid_file: str | None = None
    handed_off: bool = False  # executed by an upgrade, with its predecessor's sockets

    @classmethod
    def from_args(cls, args: argparse.Namespace, names: Sequence[str],
                  handed_off: bool = False) -> Operation:
        """Check the options (OptionError); ``names`` are the services to serve.

        ``handed_off``: a rolling restart or an upgrade executed this process
        with the sockets of the one before, which ``--listen`` had opened.
        """
        activated = _activated()
        inetd = bool(args.inetd)
        if inetd:
            _check_inetd(args, names)
        elif activated and args.listen and not handed_off:
            raise OptionError("--listen cannot be used with socket activation "
                              "(LISTEN_FDS is set: the sockets come from systemd)")
        metrics = None
        if args.metrics is not None:
            try:
                metrics = parse_endpoint(args.metrics)
            except EndpointError as exc:
                raise OptionError(f"--metrics: {exc}") from None
            if metrics.is_unix:
                raise OptionError("--metrics needs a TCP [HOST:]PORT, not a unix socket")
        try:
            credentials = resolve(args.user, args.group)
        except PrivilegeError as exc:
            raise OptionError(str(exc)) from None
        return cls(load_tls(args), metrics, bool(args.resolve_names), inetd, activated,
                   credentials, args.pid_file, handed_off)

    # -- what the serving mode gets -------------------------------------------------

    def observer(self, mode: str, workers: int = 1, serve_http: bool = True) -> Observer:
        """The access log (with names if asked) and the metrics; starts the metrics server.

        With several ``workers``, or a child process per client (``fork`` mode),
        all the processes forked after this call count into one set of figures.
        A worker executed by a rolling restart counts into them too, but
        ``serve_http=False``: its supervisor serves the scrapes.
        Raises ListenError when the metrics port cannot be bound.
        """
        from tcpkit.serving.observe.names import ResolvingObserver

        base = ResolvingObserver() if self.resolve_names else Observer()
        if self.metrics is None:
            return base
        from tcpkit.serving.observe import metrics

        if mode == "fork" or workers > 1:  # processes forked later count into shared files
            metrics.use_multiprocess_dir()
        collector = metrics.Metrics(mode)
        if not serve_http:
            return ObserverGroup([base, collector])
        try:
            metrics.serve_metrics(self.metrics, metrics.exposition_registry(collector))
        except OSError as exc:
            shown = str(self.metrics) if self.metrics.host else f":{self.metrics.port}"
            raise ListenError(f"cannot listen on {shown} (metrics): "
                              f"{exc.strerror or exc}") from None
        return ObserverGroup([base, collector])

    def inherited_listeners(self, services: Sequence[Service]) -> list[Listener] | None:
        """systemd's sockets paired with the services, or None when not activated."""
        from tcpkit.serving.guards.activation import ActivationError, inherited_sockets

        try:
            inherited = inherited_sockets()
        except ActivationError as exc:
            raise OptionError(str(exc)) from None
        if inherited is None:
            return None
        by_name = {service.name: service for service in services}
        if inherited and all(item.name in by_name for item in inherited):
            chosen = [by_name[item.name] for item in inherited if item.name is not None]
        elif len(services) == 1:
            chosen = [services[0]] * len(inherited)
        elif len(services) == len(inherited):
            chosen = list(services)
        else:
            names = " ".join(service.name for service in services)
            raise OptionError(f"systemd passed {len(inherited)} sockets for {len(services)} "
                              f"services ({names}): name them with FileDescriptorName=")
        return [Listener(service, item.sock, self.tls)
                for service, item in zip(chosen, inherited, strict=True)]


def _activated() -> bool:
    return bool(os.environ.get("LISTEN_FDS")) and os.environ.get(
        "LISTEN_PID", str(os.getpid())).strip() == str(os.getpid())


def _check_inetd(args: argparse.Namespace, names: Sequence[str]) -> None:
    if len(names) != 1:
        raise OptionError("--inetd serves one service: name it (tcpkit serve --inetd reverse)")
    clashes = [("--listen", bool(args.listen)), ("--metrics", args.metrics is not None),
               ("--max-per-ip", args.max_per_ip is not None),
               ("--rate-per-ip", args.rate_per_ip is not None),
               ("--workers", args.workers != 1), ("--pid-file", args.pid_file is not None),
               ("--mode", args.mode != "async")]
    for option, given in clashes:
        if given:
            raise OptionError(f"--inetd serves the one connection on stdin: {option} "
                              f"does not apply")


def load_tls(args: argparse.Namespace) -> ServerTLS | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise OptionError("--tls-cert and --tls-key must be given together")
    try:
        return ServerTLS(args.tls_cert, args.tls_key, args.tls_handshake_timeout)
    except TLSError as exc:
        raise OptionError(str(exc)) from None
