"""``tcpkit reverse`` and ``tcpkit factor``: pipelined command-line clients.

Both send requests from a thread while the main thread writes replies as they
arrive, half-close at the end of input and read until the server closes
(SPEC §2.2).  ``reverse`` forwards stdin in raw chunks — it never needs to look
at a line — so ``cat big.txt | tcpkit reverse`` costs a few system calls per
64 KiB.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from tcpkit.client import (
    WINDOW,
    ConnectionClosed,
    StreamSender,
    pipeline,
    read_blocks,
    strip_terminator,
)
from tcpkit.endpoints import Endpoint, EndpointError, parse_endpoint, resolve_port
from tcpkit.quoting import escape
from tcpkit.sockets import ConnectError, INETSocket
from tcpkit.tlsclient import TLSSetupError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reverse = commands.add_parser(
        "reverse", help="reverse stdin's lines through a server", description=REVERSE_ABOUT)
    reverse.add_argument("endpoint", nargs="?", default="localhost:7800", metavar="HOST[:PORT]",
                         help="server (default: localhost:7800); HOST PORT works too")
    reverse.add_argument("port", nargs="?", metavar="PORT", help=argparse.SUPPRESS)
    add_client_options(reverse)
    reverse.set_defaults(run=run_reverse)
    factor = commands.add_parser("factor", help="factor numbers through a server",
                                 description=FACTOR_ABOUT)
    factor.add_argument("numbers", nargs="*", metavar="N",
                        help="numbers to factor (default: the whitespace-separated "
                             "numbers of stdin, as GNU factor reads them)")
    factor.add_argument("-s", "--server", default="localhost:7801", metavar="ENDPOINT",
                        help="server (default: localhost:7801)")
    factor.add_argument("--show-number", action="store_true",
                        help="print 'N: factors' as GNU factor does")
    factor.add_argument("--no-progress", action="store_true",
                        help="no progress line on stderr, even on a terminal")
    factor.add_argument("--window", type=_at_least_one, default=WINDOW, metavar="N",
                        help=f"numbers in flight at most (default: {WINDOW}): bounds memory "
                             "on both ends however long stdin is")
    add_client_options(factor)
    factor.set_defaults(run=run_factor)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


REVERSE_ABOUT = (
    "Send stdin's lines to a line server (reverse, or any tcpkit service) and print "
    "every reply on stdout, in order, error replies included. Exit status: 0 when "
    "every line got a reply and none of them starts with 'error: '; 1 when one does "
    "(a reverse reply that merely reads 'error: ...' counts too), or on a refused "
    "connection, an early close or a timeout; 2 for a usage error.")
FACTOR_ABOUT = (
    "Factor each N through a factor server; with no N, factor the numbers of stdin. "
    "Like GNU factor, stdin is read as whitespace-separated numbers, not line by "
    "line: '4 6' on one line is two numbers. An error reply goes to stderr as "
    "'N: error: ...' and the exit status is 1.")
MAX_TIMEOUT = 1e6  # seconds (11.6 days): past it, no real wait is meant


def timeout_seconds(text: str) -> float | None:
    """``--timeout``: seconds from 0 to MAX_TIMEOUT; 0 means no time limit (None)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= MAX_TIMEOUT:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"must be from 0 to {MAX_TIMEOUT:.0f} seconds (0: no limit): {text!r}")
    return value or None


def add_client_options(parser: argparse.ArgumentParser) -> None:
    # Longer than the server's default --time-limit (30 s), so a number that
    # passes it ends with the server's own "time limit exceeded" reply.
    parser.add_argument("--timeout", type=timeout_seconds, default=60.0, metavar="SECONDS",
                        help="for connecting, and for each reply while one is awaited "
                             "(a quiet stdin never times out); 0 waits forever "
                             "(default: 60)")
    parser.add_argument("--tls", action="store_true",
                        help="speak TLS, checking the server's certificate")
    parser.add_argument("--ca", metavar="FILE",
                        help="trust the CA certificates in FILE (PEM) instead of the "
                             "system's (implies --tls)")


def connect(where: str | Endpoint, default_port: int, timeout: float | None,
            tls: bool = False, ca: str | None = None) -> INETSocket:
    """Connect or raise ConnectError / EndpointError with a message for the user."""
    endpoint = where if isinstance(where, Endpoint) else parse_endpoint(
        where, default_port=default_port)
    return INETSocket.connect(endpoint, timeout=timeout, tls=tls, ca=ca)


def host_and_port(host: str, port: str | None, default_port: int) -> Endpoint:
    """``HOST:PORT``, or ``HOST PORT`` as the article's ``reverseC`` takes them."""
    if port is None:
        return parse_endpoint(host, default_port=default_port)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.startswith("unix:") or (":" in bare and not _is_ipv6(bare)) or not bare:
        raise EndpointError(f"give HOST PORT or HOST:PORT, not both: {host!r} {port!r}")
    return Endpoint(host=bare, port=resolve_port(port))


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILED


def client_command(run: Any) -> Any:
    """Turn connection trouble into one line on stderr and the right exit status."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except (EndpointError, TLSSetupError) as exc:
            print(f"tcpkit {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (ConnectError, ConnectionClosed) as exc:
            return fail(str(exc))
        except TimeoutError:
            return fail("timed out waiting for a reply")
        except OSError as exc:
            return fail(exc.strerror or str(exc))

    return wrapper


# -- reverse ------------------------------------------------------------------


@client_command
def run_reverse(args: argparse.Namespace) -> int:
    endpoint = host_and_port(args.endpoint, args.port, 7800)
    sock = connect(endpoint, 7800, args.timeout, args.tls, args.ca)
    return relay_lines(sock, sys.stdin.fileno(), sys.stdout.buffer, args.timeout)


def relay_lines(sock: INETSocket, source: int, sink: BinaryIO,
                reply_timeout: float | None = None) -> int:
    """Send ``source``'s bytes, write every reply to ``sink``; the exit status.

    ``reply_timeout`` bounds the wait for an outstanding reply (never the
    wait for stdin); None waits as long as the server takes.
    """
    sock.settimeout(None)  # replies are timed by the watch, not per read
    watch = ReplyWatch(sock, reply_timeout) if reply_timeout is not None else None
    sender = StreamSender(sock, source, watch.sent if watch is not None else None)
    try:
        received, refusal, errors = _relay_replies(sock, sink, watch)
    finally:
        if watch is not None:
            watch.stop()
    if watch is not None and watch.expired:
        return fail("timed out waiting for a reply")  # the sender may still wait on stdin
    sender.join()
    if refusal is not None:  # the server's only words: it refused the connection
        return fail(refusal[len(b"error: "):].decode("utf-8", "replace").strip())
    if sender.error is not None:
        return fail(f"cannot send to the server: {sender.error}")
    if received < sender.lines:
        return fail(f"connection closed by the server after {received} of "
                    f"{sender.lines} replies")
    return EXIT_FAILED if errors else EXIT_OK


def _relay_replies(sock: INETSocket, sink: BinaryIO,
                   watch: ReplyWatch | None) -> tuple[int, bytes | None, bool]:
    """Copy reply blocks to ``sink``: (replies, a refusal, whether any was an error)."""
    received = 0
    refusal = None  # a first reply that may be the server turning us away
    errors = False
    for block in read_blocks(sock):
        count = block.count(b"\n") or 1
        if watch is not None:
            watch.answered(count)
        if received == 0 and is_refusal(block):
            refusal = block
        else:
            if refusal is not None:
                sink.write(refusal)
                refusal, errors = None, True
            sink.write(block)
            sink.flush()  # replies show up as they arrive, also through a pipe
            errors = errors or is_error_reply(block)
        received += count
    return received, refusal, errors


def is_error_reply(block: bytes) -> bool:
    """Whether a block of whole reply lines holds one starting ``error: ``."""
    return block.startswith(b"error: ") or b"\nerror: " in block


class ReplyWatch(threading.Thread):
    """End the connection once a reply has been awaited ``timeout`` seconds.

    A per-read socket timeout would also fire while *stdin* is quiet, cutting
    off a person who pauses with every reply received.  So the sender reports
    each request (:meth:`sent`), the reader each reply (:meth:`answered`), and
    the clock runs only while a request is outstanding: from the later of its
    sending and the last reply.  On expiry the socket is shut down, which ends
    the reader's wait (plain or TLS) without a second thread touching its state.
    """

    def __init__(self, sock: INETSocket, timeout: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.timeout = sock, timeout
        self.expired = False
        self._outstanding = 0
        self._since = time.monotonic()
        self._done = False
        self._changed = threading.Condition()
        self.start()

    def sent(self, requests: int) -> None:
        with self._changed:
            if self._outstanding <= 0 < self._outstanding + requests:
                self._since = time.monotonic()  # the wait begins now, not at the last reply
            self._outstanding += requests
            self._changed.notify()

    def answered(self, replies: int) -> None:
        with self._changed:
            self._outstanding -= replies
            self._since = time.monotonic()
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._done = True
            self._changed.notify()
        self.join()

    def run(self) -> None:
        with self._changed:
            while not self._done:
                if self._outstanding <= 0:
                    self._changed.wait()
                    continue
                left = self._since + self.timeout - time.monotonic()
                if left <= 0:
                    self.expired = True
                    break
                self._changed.wait(left)
        if self.expired:
            self.sock.abort()


REFUSALS = (b"error: server busy\n", b"error: connection rate exceeded\n",
            b"error: too many connections from ")


def is_refusal(block: bytes) -> bool:
    """Whether a first reply block is one of the server's refusals (SPEC §2.1).

    It counts only when it is the only reply before the server closes.  (A
    single input line whose reverse reads exactly like a refusal cannot be
    told apart; any longer exchange is never mistaken for one.)
    """
    return block.startswith(REFUSALS) and block.count(b"\n") == 1 and block.endswith(b"\n")


# -- factor ---------------------------------------------------------------------


@client_command
def run_factor(args: argparse.Namespace) -> int:
    numbers: Iterable[bytes] = (
        (one_line(n) for n in args.numbers) if args.numbers else stdin_tokens(sys.stdin.buffer))
    sock = connect(args.server, 7801, args.timeout, args.tls, args.ca)
    show = Progress(len(args.numbers) or None) if _wants_progress(args) else None
    status = EXIT_OK
    out = sys.stdout.buffer
    for number, reply in pipeline(sock, numbers, lambda n: n + b"\n", window=args.window):
        reply = strip_terminator(reply)
        if reply.startswith(b"error: "):
            out.flush()
            sys.stderr.buffer.write(escape(number).encode() + b": " + reply + b"\n")
            status = EXIT_FAILED
        elif args.show_number:
            out.write(_shown(number) + b":" + (b" " + reply if reply else b"") + b"\n")
        else:
            out.write(reply + b"\n")
        if show is not None:
            show.step()
    out.flush()
    if show is not None:
        show.done()
    return status


def one_line(argument: str) -> bytes:
    """An argument as one request: a line break inside would make it two."""
    return argument.encode("utf-8", "surrogateescape").replace(b"\r", b" ").replace(b"\n", b" ")


def stdin_tokens(stream: BinaryIO) -> Iterator[bytes]:
    """Whitespace-separated tokens of a stream, as GNU factor reads them."""
    for line in stream:
        yield from line.split()


def _shown(number: bytes) -> bytes:
    """A number as GNU factor echoes it: no plus sign, no leading zeros."""
    digits = number.lstrip(b"+")
    if digits.isdigit():
        return digits.lstrip(b"0") or b"0"
    return number


def _wants_progress(args: argparse.Namespace) -> bool:
    many = not args.numbers or len(args.numbers) > 100
    return many and not args.no_progress and sys.stderr.isatty()


class Progress:
    """A one-line progress display on stderr (only used on a terminal)."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.count = 0
        self.start = self.shown = time.monotonic()

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.shown >= 0.2:
            self.shown = now
            self._draw(now)

    def done(self) -> None:
        if self.count:
            self._draw(time.monotonic())
            sys.stderr.write("\n")

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        if self.total:
            filled = int(30 * self.count / self.total)
            bar = "#" * filled + "." * (30 - filled)
            text = f"[{bar}] {self.count}/{self.total} ({rate:,.0f}/s)"
        else:
            text = f"{self.count:,} numbers ({rate:,.0f}/s)"
        sys.stderr.write("\r" + text)
        sys.stderr.flush()

