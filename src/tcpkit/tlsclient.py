"""TLS for tcpkit's blocking clients (``--tls``/``--ca``, ``INETSocket.connect(tls=...)``).

tcpkit's clients pipeline: one thread sends while another reads the replies.
An OpenSSL connection must not be used by two threads at once, so the TLS
socket is driven non-blocking behind a lock (:class:`TLSChannel`): each
thread takes the lock only for one non-blocking ``SSL_read``/``SSL_write``,
and waits for the socket *outside* it — a reader blocked for a reply never
stops the sender.

Half-close: :meth:`TLSChannel.close_write` sends TLS's close_notify (our end of
the stream) and keeps reading the server's remaining replies, as
``shutdown(SHUT_WR)`` does for plain TCP.  A server built on asyncio closes the
connection when it sees close_notify, so replies it has not computed yet are
lost; the pipelined clients therefore only half-close over TLS when every
reply is already on its way (``tcpkit reverse``) and otherwise count replies.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import ssl
import threading
import time

from tcpkit.errors import Error


class TLSSetupError(Error, ValueError):
    """The client's TLS settings are unusable (e.g. an unreadable CA file)."""


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A client context: the system's trust store, or only ``ca`` when given."""
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise TLSSetupError(f"cannot use CA file {ca}: {reason}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def handshake_failure(exc: ssl.SSLError) -> str:
    """A short reason for a failed handshake, e.g. ``certificate verify failed: ...``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or 'certificate verify failed'}"
    return f"TLS handshake failed: {exc.reason or exc}"


class TLSChannel:
    """TLS over a connected socket, safe for one reading and one writing thread.

    The TLS state is an ``ssl.SSLObject`` on memory buffers; this class moves
    the bytes.  The lock guards the TLS state and is never held while waiting
    for the network.  Every read decrypts everything that has arrived into a
    plain buffer, so the TLS object never holds unread application data — that
    is what lets :meth:`close_write` send close_notify at any time (OpenSSL
    refuses to shut down over unread data).
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_name: str,
                 timeout: float | None) -> None:
        self.sock = sock
        self.timeout = timeout
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_name)
        self._lock = threading.Lock()  # the TLS state
        self._sending = threading.Lock()  # keeps records in order on the wire
        self._plain = bytearray()  # decrypted, not yet returned (reader thread only)
        self._eof = False
        sock.setblocking(False)

    def handshake(self) -> None:
        """Do the client handshake (ssl.SSLError, OSError or TimeoutError on failure)."""
        deadline = self._deadline()
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            self._flush(deadline)
            if done:
                return
            if not self._fill(deadline):
                raise ConnectionResetError("connection closed during the TLS handshake")

    def recv_into(self, buffer: memoryview | bytearray) -> int:
        """Plain bytes into ``buffer``; 0 at the end of the stream."""
        deadline = self._deadline()
        while not self._plain and not self._eof:
            self._fill(deadline)
        count = min(len(buffer), len(self._plain))
        buffer[:count] = self._plain[:count]
        del self._plain[:count]
        return count

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._tls.write(data)
        self._flush(self._deadline())

    def close_write(self) -> None:
        """Send close_notify; replies can still be read until the server closes."""
        # SSLWantReadError: ours is out; the server's comes with its last reply.
        with self._lock, contextlib.suppress(ssl.SSLWantReadError):
            self._tls.unwrap()
        self._flush(self._deadline())

    # -- moving bytes ---------------------------------------------------------------

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _wait(self, writable: bool, deadline: float | None) -> None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        waiting = ([], [self.sock]) if writable else ([self.sock], [])
        if not any(select.select(*waiting, [], remaining)):
            raise TimeoutError("timed out")

    def _fill(self, deadline: float | None) -> bool:
        """Receive and decrypt what the network has; False at the end of the stream."""
        self._wait(False, deadline)
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
                self._eof = True
            try:
                while chunk := self._tls.read(65536):
                    self._plain += chunk
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True  # the server's close_notify, or a close without one
            pending = self._outgoing.pending
        if pending:
            self._flush(deadline)
        return bool(data)

    def _flush(self, deadline: float | None) -> None:
        with self._sending:
            while True:
                with self._lock:
                    chunk = self._outgoing.read()
                if not chunk:
                    return
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[self.sock.send(view):]
                    except (BlockingIOError, InterruptedError):
                        self._wait(True, deadline)

    def reader(self) -> io.BufferedReader:
        return io.BufferedReader(_RawTLS(self), 65536)


class _RawTLS(io.RawIOBase):
    def __init__(self, channel: TLSChannel) -> None:
        self.channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        return self.channel.recv_into(buffer)
