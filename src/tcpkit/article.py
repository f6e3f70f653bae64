"""The article's four programs: ``reverseS``, ``reverseC``, ``factorS``, ``factorC``.

They print the transcripts of "Network Programming with IO::Socket" on stdout,
line for line (logs, such as the real address listened on, go to stderr), and
are written on :class:`~tcpkit.sockets.INETSocket` as the
article writes them on IO::Socket::INET.  Past their transcripts they are the
real services: the servers hand their listening socket to the async serving
mode, so they serve many clients at once, obey the same limits and stop
cleanly on ^C.

Transcripts (SPEC §2.3)::

    $ reverseS 7800                 $ reverseC localhost 7800
    socket                          socket
    bind                            bind
    listen                          connect
    accept localhost:40012          olleh
    close HANDLER                   close

    $ factorS                       $ factorC localhost 7801 42
    Listening on 7801               2 3 7
    accept localhost

``close HANDLER`` is printed literally, as the article's transcript and Perl
program print it: the transcript is the contract, so nothing else goes on
stdout.  The four programs take ``--help`` and ``--version`` like every
command; anything else that starts with ``-`` is a usage error, never a port.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import NoReturn

from tcpkit import __version__, logs, registry
from tcpkit.endpoints import EndpointError, format_address, resolve_port
from tcpkit.serving.config import Listener
from tcpkit.serving.listeners import ListenError
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.observe.names import NameResolver
from tcpkit.serving.run import serve_listeners
from tcpkit.sockets import ConnectError, INETSocket


class TranscriptObserver(Observer):
    """Prints ``accept``/``close`` lines on stdout, with reverse-DNS names.

    Lookups run off the event loop (:class:`~tcpkit.serving.observe.names.NameResolver`)
    so a slow DNS server never stalls other clients; its single printer thread
    keeps each client's lines in order (its ``close`` waits for its ``accept``).
    """

    def __init__(self, accept_line: Callable[[str, int], str],
                 close_line: Callable[[str, int], str] | None) -> None:
        self.accept_line, self.close_line = accept_line, close_line
        self.resolver = NameResolver()
        self._names: dict[tuple[str, int], Future[str]] = {}

    def accepted(self, service: str, host: str, port: int) -> None:
        name = self.resolver.lookup(host)
        self._names[host, port] = name
        self.resolver.later(lambda: _print(self.accept_line(self.resolver.name(name, host), port)))

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        name = self._names.pop((host, port), None)
        if self.close_line is None or name is None:
            return
        close_line = self.close_line
        self.resolver.later(lambda: _print(close_line(self.resolver.name(name, host), port)))


def _print(line: str) -> None:
    print(line, flush=True)


def _arguments(argv: Sequence[str] | None, usage: str, summary: str | None) -> list[str]:
    """The program's arguments; ``-h``/``--help`` and ``--version`` answer and exit 0.

    Any other option is a usage error: ``reverseS --version`` must never be
    taken for a port name.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        what = (summary or "").split("``: ", 1)[-1].replace("``", "")  # docstring, sans usage
        print(f"usage: {usage}\n\n{what[:1].upper()}{what[1:]}\n\n"
              "options: -h, --help (this text), --version".rstrip())
        raise SystemExit(0)
    if args[:1] == ["--version"]:
        print(f"{usage.split()[0]} (tcpkit {__version__})")
        raise SystemExit(0)
    option = next((arg for arg in args if arg.startswith("-") and arg != "-"
                   and not _is_number(arg)), None)
    if option is not None:
        _usage(usage, f"unknown option {option!r} (options: --help, --version)")
    return args


def _is_number(text: str) -> bool:
    """``-42`` is factorC's number, not an option."""
    return text[1:].isascii() and text[1:].isdigit()


def _port_argument(argv: Sequence[str], default: int, usage: str) -> int:
    if len(argv) > 1:
        _usage(usage)
    try:
        return resolve_port(argv[0]) if argv else default
    except EndpointError as exc:
        _usage(usage, str(exc))


def _usage(usage: str, problem: str | None = None) -> NoReturn:
    if problem:
        print(f"error: {problem}", file=sys.stderr)
    print(f"usage: {usage}", file=sys.stderr)
    raise SystemExit(2)


def _serve(server: INETSocket, name: str, observer: TranscriptObserver) -> None:
    logs.configure("info")  # stderr: "Listening on ...", the summary
    server.sock.setblocking(False)
    serve_listeners([Listener(registry.get(name), server.sock)], "async", None, observer)


def reverse_server_main(argv: Sequence[str] | None = None) -> None:
    """``reverseS [PORT]``: the reverse service with the article's transcript."""
    usage = "reverseS [PORT]"
    port = _port_argument(_arguments(argv, usage, reverse_server_main.__doc__), 7800, usage)
    try:
        server = INETSocket.socket()
        print("socket", flush=True)
        server.bind(port=port)
        print("bind", flush=True)
        server.listen()
        print("listen", flush=True)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    _serve(server, "reverse", TranscriptObserver(
        lambda name, p: f"accept {format_address(name, p)}",
        lambda name, p: "close HANDLER"))


def factor_server_main(argv: Sequence[str] | None = None) -> None:
    """``factorS [PORT]``: the factor service with the article's transcript."""
    usage = "factorS [PORT]"
    port = _port_argument(_arguments(argv, usage, factor_server_main.__doc__), 7801, usage)
    try:
        server = INETSocket.listen_on(port)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"Listening on {server.sockport}", flush=True)
    _serve(server, "factor", TranscriptObserver(lambda name, p: f"accept {name}", None))


def _client_socket(host: str, port_text: str) -> INETSocket:
    """socket, bind, connect — printing each step as the article's client does."""
    port = resolve_port(port_text)
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConnectError(f"cannot connect to {format_address(host, port)}: "
                           f"{exc.strerror}") from None
    sock = INETSocket.socket(family)
    print("socket", flush=True)
    sock.bind("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
    print("bind", flush=True)
    sock.connect_to(str(address[0]), port, timeout=30)
    print("connect", flush=True)
    return sock


def reverse_client_main(argv: Sequence[str] | None = None) -> None:
    """``reverseC HOST PORT``: send stdin's lines, print each reply, then ``close``."""
    from tcpkit.cli_clients import relay_lines

    args = _arguments(argv, "reverseC HOST PORT", reverse_client_main.__doc__)
    if len(args) != 2:
        _usage("reverseC HOST PORT")
    try:
        sock = _client_socket(args[0], args[1])
        sock.settimeout(None)  # a person may type slowly
        status = relay_lines(sock, sys.stdin.fileno(), sys.stdout.buffer)
    except EndpointError as exc:
        _usage("reverseC HOST PORT", str(exc))
    except (ConnectError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    sock.close()
    print("close", flush=True)
    raise SystemExit(status)


def factor_client_main(argv: Sequence[str] | None = None) -> None:
    """``factorC HOST PORT N``: print the prime factors of N."""
    from tcpkit.cli_clients import one_line
    from tcpkit.client import FactorClient
    from tcpkit.endpoints import Endpoint
    from tcpkit.quoting import escape

    args = _arguments(argv, "factorC HOST PORT N", factor_client_main.__doc__)
    if len(args) != 3:
        _usage("factorC HOST PORT N")
    host, port_text, number = args
    try:
        endpoint = Endpoint(host=host, port=resolve_port(port_text))
        with FactorClient(endpoint) as client:
            reply = client.request(one_line(number))
    except EndpointError as exc:
        _usage("factorC HOST PORT N", str(exc))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if reply.startswith(b"error: "):
        shown = escape(one_line(number))  # as the server quotes it: no raw control bytes
        print(f"{shown}: {reply.decode('utf-8', 'replace')}", file=sys.stderr)
        raise SystemExit(1)
    print(reply.decode("ascii"))
