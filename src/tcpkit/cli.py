"""The ``tcpkit`` command: ``serve``, ``reverse``, ``factor`` and ``services``.

Exit status (SPEC §2): 0 ok, 1 a request failed (error reply, refused
connection, timeout, port in use), 2 usage error.  Every failure a user can
cause ends in one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from tcpkit import __version__, logs, registry
from tcpkit.endpoints import Endpoint, EndpointError, parse_endpoint, resolve_port
from tcpkit.service import Options, Service
from tcpkit.serving.config import MODES, Limits

if TYPE_CHECKING:
    from tcpkit.operate import Operation

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MODE_HELP = (
    "serving model: async = one event loop (uvloop) for all clients; thread = a thread "
    "per client; fork = a child process per client (reaped, capped by --max-connections); "
    "iterative = one client at a time, the others wait (default: async)")


class UsageError(Exception):
    """Bad arguments discovered after parsing (exit 2)."""


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

    parse.__name__ = kind.__name__
    return parse


def workers_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one per CPU."""
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    count = positive(int)(text)
    return int(count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpkit", description="Line-oriented TCP services: reverse and factor.")
    parser.add_argument("--version", action="version", version=f"tcpkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_parser(commands)
    from tcpkit import cli_clients

    cli_clients.add_parsers(commands)
    services = commands.add_parser(
        "services", help="list registered services or resolve one",
        description="List the registered services, or resolve NAME to its port (tcpkit's "
                    "registry, then /etc/services). An unknown NAME is a usage error "
                    "(exit 2), as it is for tcpkit serve.")
    services.add_argument("name", nargs="?", help="a service name to resolve to its port")
    services.set_defaults(run=run_services)
    return parser


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", help="run services (default: reverse on 7800 and factor on 7801)",
        description="Serve one or more registered services until SIGINT/SIGTERM.")
    serve.add_argument("services", nargs="*", metavar="SERVICE",
                       help="services to run (default: reverse factor, or those named in "
                            "--listen SERVICE=ENDPOINT)")
    serve.add_argument("--listen", action="append", default=[], metavar="ENDPOINT",
                       help="PORT, HOST:PORT, [V6]:PORT, HOST:NAME or unix:/path; "
                            "with several services SERVICE=ENDPOINT (repeatable)")
    serve.add_argument("--mode", choices=MODES, default="async", help=MODE_HELP)
    serve.add_argument("--workers", type=workers_count, default=1, metavar="N|auto",
                       help="processes serving the same sockets, under a supervisor that "
                            "restarts any that dies; auto = one per CPU (default: 1)")
    limits = Limits()
    serve.add_argument("--max-connections", type=positive(int), default=limits.max_connections,
                       metavar="N",
                       help="clients served at once (per worker); past it a client gets "
                            "'error: server busy' (default: %(default)s)")
    serve.add_argument("--idle-timeout", type=positive(float), default=limits.idle_timeout,
                       metavar="SECONDS", help="close a client silent this long "
                                               "(default: %(default)s)")
    serve.add_argument("--max-line", type=positive(int), default=limits.max_line,
                       metavar="BYTES", help="longest request line; longer gets an error "
                                             "and the connection closes (default: %(default)s)")
    serve.add_argument("--drain-timeout", type=positive(float), default=limits.drain_timeout,
                       metavar="SECONDS", help="on SIGINT/SIGTERM, how long to finish the "
                                               "requests already read (default: %(default)s)")
    serve.add_argument("--time-limit", type=positive(float), default=limits.time_limit,
                       metavar="SECONDS", help="bound on the work for one request (factor)")
    serve.add_argument("--max-digits", type=positive(int), default=Options().max_digits,
                       help="longest number the factor service accepts")
    serve.add_argument("--factor-workers", type=positive(int), default=None, metavar="N",
                       help="worker processes for large factorizations (default: CPUs)")
    serve.add_argument("--executor", default="local", metavar="local|dask://HOST:PORT",
                       help="where large factorizations run: local worker processes "
                            "(default) or a Dask cluster's scheduler (needs tcpkit[dask])")
    add_log_options(serve)
    from tcpkit import operate

    operate.add_options(serve, positive)
    serve.set_defaults(run=run_serve)


def add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info")


def plan_listeners(names: Sequence[str], listen: Sequence[str]) -> list[tuple[str, Endpoint]]:
    """Pair services with endpoints: ``--listen E`` for one service, ``S=E`` for several.

    With no SERVICE given, the services named in ``--listen SERVICE=ENDPOINT``
    are served, and only they: naming one service's endpoint must not open
    another service's public port.  With none named either, both defaults.
    """
    named = [item.partition("=")[0] for item in listen if "=" in item]
    names = list(names) or list(dict.fromkeys(named)) or ["reverse", "factor"]
    explicit: dict[str, list[Endpoint]] = {name: [] for name in names}
    for item in listen:
        name, sep, text = item.partition("=")
        if not sep:
            if len(names) > 1:
                raise UsageError(f"with several services, write --listen SERVICE=ENDPOINT "
                                 f"(got {item!r})")
            name, text = names[0], item
        if name not in explicit:
            raise UsageError(f"--listen {item!r} names a service that is not being served")
        explicit[name].append(parse_endpoint(text))
    plan = []
    for name in names:
        service = registry.get(name)
        for endpoint in explicit[name] or [Endpoint(port=service.port)]:
            plan.append((name, endpoint))
    return plan


def run_serve(args: argparse.Namespace) -> int:
    from tcpkit.operate import Operation, OptionError
    from tcpkit.serving.listeners import ListenError

    try:
        plan = plan_listeners(args.services, [] if args.inetd else args.listen)
        ops = Operation.from_args(args, list(dict.fromkeys(name for name, _ in plan)))
    except (EndpointError, registry.UnknownService, OptionError) as exc:
        raise UsageError(str(exc)) from None
    from tcpkit.serving.offload.executors import check_executor

    try:
        check_executor(args.executor)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = Options(max_digits=args.max_digits)
    services: dict[str, Service] = {}
    for name, _ in plan:
        services.setdefault(name, registry.get(name).configured(options))
    limits = Limits(
        max_connections=args.max_connections, idle_timeout=args.idle_timeout,
        max_line=args.max_line, drain_timeout=args.drain_timeout,
        time_limit=args.time_limit, pool_size=args.factor_workers,
        max_per_ip=args.max_per_ip, rate_per_ip=args.rate_per_ip,
        executor=None if args.executor == "local" else args.executor,
    )
    if args.check_config:
        print("config ok")
        return EXIT_OK
    try:
        return serve_operated(ops, args, list(services.values()), [
            (services[name], endpoint) for name, endpoint in plan], limits)
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def serve_operated(ops: Operation, args: argparse.Namespace, services: list[Service],
                   plan: list[tuple[Service, Endpoint]], limits: Limits) -> int:
    """Serve the one inetd connection, systemd's sockets, or the ones in ``plan``."""
    from tcpkit.serving.modes.inetd import InetdError, serve_inetd, take_stdin_socket
    from tcpkit.serving.run import run, serve_listeners

    if ops.inetd:
        try:
            sock = take_stdin_socket()
        except InetdError as exc:
            raise UsageError(str(exc)) from None
        serve_inetd(sock, services[0], limits, ops.observer("inetd"), ops.tls)
        return EXIT_OK
    inherited = ops.inherited_listeners(services)
    observer = ops.observer(args.mode, getattr(args, "workers", 1))
    if inherited is not None:
        serve_listeners(inherited, args.mode, limits, observer, args.workers)
    else:
        run(plan, args.mode, limits, observer, ops.tls, args.workers)
    return EXIT_OK


def run_services(args: argparse.Namespace) -> int:
    if args.name is None:
        for service in sorted(registry.services().values(), key=lambda s: s.port):
            print(f"{service.name:<12} {service.port:>5}/tcp  {service.description}")
        return EXIT_OK
    try:
        port = resolve_port(args.name)
    except EndpointError as exc:  # a name nobody knows: a usage error, as for serve
        raise UsageError(str(exc)) from None
    source = "tcpkit" if args.name in registry.services() else "system"
    if args.name.isdigit():
        try:
            source, name = "system", socket.getservbyport(port, "tcp")
            print(f"{port}/tcp  {name}")
        except OSError:
            print(f"{port}/tcp")
        return EXIT_OK
    print(f"{args.name:<12} {port:>5}/tcp  ({source})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``tcpkit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        status = args.run(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error
        sys.stderr.close()
        status = EXIT_OK
    sys.exit(status)
