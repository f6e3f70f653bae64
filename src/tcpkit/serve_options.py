"""Every option of ``tcpkit serve``, in one table, and what the parsed options build.

:func:`add_options` adds the whole table to the ``serve`` parser; :func:`limits`
and :func:`service_options` turn the parsed namespace into what the serving
modes and the services are given.  Each default is read from the object that
uses it (:class:`~tcpkit.serving.config.Limits`, :class:`~tcpkit.service.Options`,
the TLS guard), so the help text cannot drift from the behaviour; every help
line that has a default ends in ``(default: X)``.

How the operator options combine (``--inetd`` with ``--listen``, a TLS key
without its certificate, ...) is checked afterwards, in
:meth:`tcpkit.operate.Operation.from_args`, because those checks need the
services being served and the environment (socket activation).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from tcpkit import logs
from tcpkit.service import Options
from tcpkit.serving.config import MODES, Limits
from tcpkit.serving.guards.access import IPNetwork, parse_network
from tcpkit.serving.guards.admission import parse_rate
from tcpkit.serving.guards.tls import HANDSHAKE_TIMEOUT

MODE_HELP = (
    "serving model: async = one event loop (uvloop) for all clients; thread = a thread "
    "per client; fork = a child process per client (reaped, capped by --max-connections); "
    "iterative = one client at a time, the others wait")


# -- argument types -----------------------------------------------------------------

def positive(kind: Callable[[str], float | int]) -> Callable[[str], float | int]:
    """An argparse type that accepts only numbers above zero."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def workers_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one per CPU this process may use."""
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return int(positive(int)(text))


def rate(text: str) -> float:
    """``--rate-per-ip``: ``N``, ``N/s`` or ``N/m`` as connections per second."""
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def networks(text: str) -> tuple[IPNetwork, ...]:
    """``--allow``, ``--deny``, ``--proxy-protocol``: CIDR blocks, separated by commas."""
    try:
        return tuple(parse_network(part) for part in text.split(",") if part.strip()) or (
            parse_network(text),)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def shown_default(value: float | int | str) -> str:
    """The one way help text states a default: ``(default: 300)``, ``(default: 0.5)``."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"(default: {text})"


# -- the table ----------------------------------------------------------------------

def add_options(serve: argparse.ArgumentParser) -> None:
    """Every option of ``tcpkit serve``, grouped as ``--help`` shows them."""
    serve.add_argument("services", nargs="*", metavar="SERVICE",
                       help="services to run: registered names, or package.module:SERVICE "
                            "(imported, from the current directory too; default: "
                            "reverse factor, or those named in --listen SERVICE=ENDPOINT)")
    _add_listening(serve.add_argument_group("listening"))
    _add_limits(serve.add_argument_group("limits"))
    _add_factor(serve.add_argument_group("factor service"))
    _add_sessions(serve.add_argument_group("session services"))
    _add_production(serve.add_argument_group("production"))
    _add_host(serve.add_argument_group("behind a proxy, on a real host"))
    _add_logging(serve.add_argument_group("logging"))


def _add_listening(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                       help="PORT, HOST:PORT, [V6]:PORT, HOST:NAME or unix:/path; "
                            "with several services SERVICE=ENDPOINT (repeatable)")
    group.add_argument("--mode", choices=MODES, default="async",
                       help=f"{MODE_HELP} {shown_default('async')}")
    group.add_argument("--workers", type=workers_count, default=1, metavar="N|auto",
                       help="processes serving the same sockets, under a supervisor that "
                            f"restarts any that dies; auto = one per CPU {shown_default(1)}")


def _add_limits(group: argparse._ArgumentGroup) -> None:
    default = Limits()
    group.add_argument("--max-connections", type=positive(int),
                       default=default.max_connections, metavar="N",
                       help="clients served at once, per service, per worker; past it a "
                            "client gets 'error: server busy' "
                            f"{shown_default(default.max_connections)}")
    group.add_argument("--idle-timeout", type=positive(float), default=default.idle_timeout,
                       metavar="SECONDS", help="close a client silent this long "
                                               f"{shown_default(default.idle_timeout)}")
    group.add_argument("--max-line", type=positive(int), default=default.max_line,
                       metavar="BYTES", help="longest request line; longer gets an error and "
                                             "the connection closes "
                                             f"{shown_default(default.max_line)}")
    group.add_argument("--drain-timeout", type=positive(float), default=default.drain_timeout,
                       metavar="SECONDS", help="on SIGINT/SIGTERM, how long to finish the "
                                               "requests already read "
                                               f"{shown_default(default.drain_timeout)}")
    group.add_argument("--time-limit", type=positive(float), default=default.time_limit,
                       metavar="SECONDS", help="bound on the work for one factor request "
                                               f"{shown_default(default.time_limit)}")
    group.add_argument("--max-per-ip", type=positive(int), default=default.max_per_ip,
                       metavar="N", help="open connections allowed per client address "
                                         "(default: no limit)")
    group.add_argument("--rate-per-ip", type=rate, default=default.rate_per_ip, metavar="N/s",
                       help="new connections allowed per second per client address; "
                            "N/m for per minute (default: no limit)")


def _add_factor(group: argparse._ArgumentGroup) -> None:
    max_digits = Options().max_digits
    group.add_argument("--max-digits", type=positive(int), default=max_digits, metavar="N",
                       help="longest number the factor service accepts "
                            f"{shown_default(max_digits)}")
    group.add_argument("--factor-workers", type=positive(int), default=None, metavar="N",
                       help="worker processes for large factorizations (default: CPUs)")
    group.add_argument("--executor", default="local", metavar="local|dask://HOST:PORT",
                       help="where large factorizations run: local worker processes or a "
                            "Dask cluster's scheduler (needs tcpkit[dask]) "
                            f"{shown_default('local')}")


def _add_sessions(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--pubsub", default=None, metavar="local|redis://HOST:PORT",
                       help="where session services' rooms, counters and names live: this "
                            "process, or Redis, shared by every worker and server (needs "
                            f"tcpkit[redis]); required by shared-state services under "
                            f"--mode fork or --workers {shown_default('local')}")


def _add_production(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--tls-cert", metavar="FILE", help="serve over TLS with this "
                       "certificate chain (PEM); SIGHUP reloads it")
    group.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    group.add_argument("--tls-handshake-timeout", type=positive(float),
                       default=HANDSHAKE_TIMEOUT, metavar="SECONDS",
                       help="close clients that have not finished the TLS handshake "
                            f"{shown_default(HANDSHAKE_TIMEOUT)}")
    group.add_argument("--metrics", metavar="[HOST:]PORT",
                       help="serve Prometheus metrics over HTTP at /metrics")
    group.add_argument("--resolve-names", action="store_true",
                       help="log clients' reverse-DNS names (looked up off the event loop)")
    group.add_argument("--inetd", action="store_true",
                       help="serve the one connection on stdin/stdout (inetd nowait)")
    group.add_argument("--config", metavar="FILE",
                       help="read options from this TOML file: any option under its long "
                            "name, and a [services.NAME] table per service with its own "
                            "listen and limits; command-line flags win")
    group.add_argument("--check-config", action="store_true",
                       help="check the options (and --config FILE), print 'config ok' "
                            "and exit")


def _add_host(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--proxy-protocol", type=networks, action="append", default=[],
                       metavar="CIDR[,CIDR...]",
                       help="read a PROXY protocol header (HAProxy send-proxy, v1 or v2) "
                            "from these senders, and serve the client it names; anyone "
                            "else is refused (repeatable)")
    group.add_argument("--allow", type=networks, action="append", default=[],
                       metavar="CIDR", help="serve only clients from these networks "
                                            "(repeatable; default: everyone)")
    group.add_argument("--deny", type=networks, action="append", default=[], metavar="CIDR",
                       help="refuse clients from these networks with 'error: access "
                            "denied'; deny wins over --allow (repeatable)")
    group.add_argument("--quiet-deny", action="store_true",
                       help="close a denied client without the error line")
    group.add_argument("--user", metavar="NAME",
                       help="after opening every socket and file as root, run as this user "
                            "(its group too, unless --group)")
    group.add_argument("--group", metavar="NAME", help="...and as this group")
    group.add_argument("--pid-file", metavar="FILE",
                       help="write the server's PID here after binding; removed at exit")


def _add_logging(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="text: lines like the article's transcripts; json: one object "
                            f"per line, for log shippers {shown_default('text')}")
    group.add_argument("--log-level", choices=logs.LEVELS, default="info",
                       help="log this level and above on stderr; info includes every "
                            f"accept and close {shown_default('info')}")


# -- what the parsed options build --------------------------------------------------

def limits(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` every serving mode obeys, from the parsed options."""
    return Limits(
        max_connections=args.max_connections, idle_timeout=args.idle_timeout,
        max_line=args.max_line, drain_timeout=args.drain_timeout,
        time_limit=args.time_limit, pool_size=args.factor_workers,
        max_per_ip=args.max_per_ip, rate_per_ip=args.rate_per_ip,
        executor=None if args.executor == "local" else args.executor,
        allow=_joined(args.allow), deny=_joined(args.deny), quiet_deny=args.quiet_deny,
        proxy_from=_joined(args.proxy_protocol) or None,
        pubsub=None if args.pubsub in (None, "local") else args.pubsub,
    )


def _joined(groups: list[tuple[IPNetwork, ...]]) -> tuple[IPNetwork, ...]:
    return tuple(network for group in groups for network in group)


def service_options(args: argparse.Namespace) -> Options:
    """The per-service :class:`Options` the services are configured with."""
    return Options(max_digits=args.max_digits)
