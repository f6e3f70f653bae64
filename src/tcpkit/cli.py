"""The ``tcpkit`` command: ``serve``, ``reverse``, ``factor`` and ``services``.

Exit status (SPEC §2): 0 ok, 1 a request failed (error reply, refused
connection, timeout, port in use), 2 usage error.  Every failure a user can
cause ends in one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn, cast

from tcpkit import __version__, logs, registry, serve_options
from tcpkit.endpoints import Endpoint, EndpointError, parse_endpoint, resolve_port
from tcpkit.errors import Error
from tcpkit.service import Service
from tcpkit.serving.config import Limits

if TYPE_CHECKING:
    from tcpkit.config_file import Settled
    from tcpkit.operate import Operation
    from tcpkit.serving.reexec import Handoff

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Error):
    """Bad arguments discovered after parsing (exit 2)."""


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it reports the arguments it does not know itself.

    argparse otherwise hands a subcommand's unknown arguments back to the
    top-level parser, whose usage line (``tcpkit [-h] COMMAND ...``) says
    nothing about the options the user was reaching for.
    """

    def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpkit", description="Line-oriented TCP services: reverse and factor.")
    parser.add_argument("--version", action="version", version=f"tcpkit {__version__}")
    # The cast: add_parser only ever hands out parsers, so a CommandParser is one.
    commands = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
                    parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                          parser_class=CommandParser))
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


def serve_parser() -> argparse.ArgumentParser:
    """A parser of ``tcpkit serve``'s options alone (what a config file may set)."""
    parser = CommandParser(prog="tcpkit serve", add_help=False)
    serve_options.add_options(parser)
    return parser


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", help="run services (default: reverse on 7800 and factor on 7801)",
        description="Serve one or more registered services until SIGINT/SIGTERM.")
    serve_options.add_options(serve)
    serve.set_defaults(run=run_serve)


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
    from tcpkit.serving.guards.pidfile import PidFileError
    from tcpkit.serving.listeners import ListenError
    from tcpkit.serving.reexec import take_handoff

    handoff = take_handoff()  # set when a rolling restart or an upgrade executed us
    per_service: dict[str, dict[str, object]] = {}
    if args.config:
        from tcpkit.config_file import ConfigError, apply

        try:
            per_service = apply(args, serve_parser(), args.command_line)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    try:
        plan = plan_listeners(args.services, [] if args.inetd else args.listen)
        ops = Operation.from_args(args, list(dict.fromkeys(name for name, _ in plan)),
                                  handed_off=handoff is not None)
    except (EndpointError, registry.UnknownService, OptionError) as exc:
        raise UsageError(str(exc)) from None
    from tcpkit.hub import check_pubsub
    from tcpkit.serving.offload.executors import check_executor
    from tcpkit.serving.run import shared_state_refusal

    try:
        check_executor(args.executor)
        check_pubsub(args.pubsub)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = serve_options.service_options(args)
    services: dict[str, Service] = {}
    for name, _ in plan:
        services.setdefault(name, registry.get(name).configured(options))
    refusal = shared_state_refusal(services.values(), args.mode, args.workers, args.pubsub)
    if refusal is not None:
        raise UsageError(refusal)
    limits = serve_options.limits(args)
    from tcpkit.config_file import Settled

    try:
        settle = Settled(args, per_service)
    except OptionError as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    if args.check_config:
        print("config ok")
        return EXIT_OK
    try:
        if handoff is not None and handoff.is_worker:
            return serve_worker(ops, args, list(services.values()), limits, settle, handoff)
        return serve_operated(ops, args, list(services.values()), [
            (services[name], endpoint) for name, endpoint in plan], limits, settle)
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    except (ListenError, PidFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def serve_operated(ops: Operation, args: argparse.Namespace, services: list[Service],
                   plan: list[tuple[Service, Endpoint]], limits: Limits,
                   settle: Settled) -> int:
    """Serve the one inetd connection, systemd's sockets, or the ones in ``plan``."""
    from tcpkit.serving.guards import privileges
    from tcpkit.serving.modes.inetd import InetdError, serve_inetd, take_stdin_socket
    from tcpkit.serving.run import opened, serve_listeners

    if ops.inetd:
        try:
            sock = take_stdin_socket()
        except InetdError as exc:
            raise UsageError(str(exc)) from None
        privileges.drop(ops.credentials)
        name = services[0].name  # its own table's limits and certificate, if it has one
        serve_inetd(sock, services[0], settle.limits.get(name, limits), ops.observer("inetd"),
                    settle.tls.get(name, ops.tls))
        return EXIT_OK
    inherited = ops.inherited_listeners(services)
    observer = ops.observer(args.mode, args.workers)
    reexec = [sys.executable, "-m", "tcpkit", *args.command_line]  # what SIGUSR2 runs
    if ops.handed_off:
        # An upgrade executed us: our predecessor already was the user asked
        # for (a second switch would fail without root) and held the pid file.
        ops.credentials = None
    if inherited is not None:
        serve_listeners(settle(inherited), args.mode, limits, observer, args.workers,
                        ops.pid_file, ops.credentials, reexec)
        return EXIT_OK
    with opened(plan, ops.tls) as listeners:
        serve_listeners(settle(listeners), args.mode, limits, observer, args.workers,
                        ops.pid_file, ops.credentials, reexec)
    return EXIT_OK


def serve_worker(ops: Operation, args: argparse.Namespace, services: list[Service],
                 limits: Limits, settle: Settled, handoff: Handoff) -> int:
    """A worker a rolling restart executed: serve the supervisor's sockets, then report.

    Its sockets, stop pipe and stats pipe come from the supervisor; the metrics
    it counts go to the files the supervisor's scrape merges.
    """
    from tcpkit.serving.modes.supervisor import serve_as_worker
    from tcpkit.serving.run import serve_once

    inherited = ops.inherited_listeners(services)
    if not inherited or handoff.stop is None or handoff.report is None:
        raise UsageError("a worker was started without its supervisor's sockets")
    serve_as_worker(settle(inherited), args.mode, serve_once, limits,
                    ops.observer(args.mode, args.workers, serve_http=False),
                    handoff.stop, handoff.report, handoff.ready)
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
            name = socket.getservbyport(port, "tcp")
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
    args.command_line = list(sys.argv[1:] if argv is None else argv)
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
