"""TLS for servers (``--tls-cert``/``--tls-key``), with reload on SIGHUP.

:class:`ServerTLS` holds the certificate and key an operator named and the
``ssl.SSLContext`` made from them: the standard library's modern defaults for
servers (``create_default_context(Purpose.CLIENT_AUTH)``: the system's cipher
list, no compression) with TLS 1.2 as the oldest version accepted.

Reloading must not drop open connections, and a serving mode may have handed
its context to the event loop for good (``create_server(ssl=...)`` keeps the
context it was given).  So :attr:`ServerTLS.context` never changes: a reload
builds a *new* context from the files, and the first context's SNI callback —
which OpenSSL calls early in every handshake, whether or not the client sends
a server name — moves each new connection onto the newest one.  Connections
already open keep the context they started with.  A reload that fails (a
missing file, a key that does not match) keeps the old certificate and says
why in the log.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import ssl
import time
from collections.abc import Iterable, Sequence

from tcpkit.errors import Error

log = logging.getLogger("tcpkit")
HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to finish the TLS handshake


class TLSError(Error):
    """The certificate or key cannot be used; the message is ready for the user."""


def _check_readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise TLSError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from None


def load_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key``, or TLSError saying what is wrong."""
    _check_readable(cert, "certificate")
    _check_readable(key, "key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc).lower()
        if "mismatch" in reason:
            raise TLSError(f"TLS key {key} does not match certificate {cert}") from None
        raise TLSError(f"cannot load TLS certificate {cert} with key {key}: "
                       f"{exc.reason or exc} (expected PEM files)") from None
    except OSError as exc:
        raise TLSError(f"cannot load TLS certificate {cert}: {exc.strerror or exc}") from None
    return context


class ServerTLS:
    """A server's certificate: the context to serve with, and :meth:`reload`."""

    def __init__(self, cert: str, key: str,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.cert, self.key = cert, key
        self.handshake_timeout = handshake_timeout
        self.context = load_context(cert, key)  # raises TLSError
        self._current = self.context
        self.context.sni_callback = self._use_current

    @property
    def current(self) -> ssl.SSLContext:
        """The newest context (what new connections get)."""
        return self._current

    def reload(self) -> bool:
        """Read the files again for new connections; False (and a log line) on failure."""
        try:
            fresh = load_context(self.cert, self.key)
        except TLSError as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc,
                      extra={"event": "tls-reload-failed"})
            return False
        self._current = fresh
        log.info("TLS certificate reloaded from %s", self.cert, extra={"event": "tls-reload"})
        return True

    def _use_current(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                     context: ssl.SSLContext) -> None:
        if self._current is not context:
            sslobj.context = self._current


def reload_certificates(certificates: Iterable[ServerTLS | None],
                        say_if_none: bool = True) -> None:
    """SIGHUP: reload each distinct certificate (or say there is none: a server's
    one line; a supervisor, whose workers say it, passes ``say_if_none=False``)."""
    unique = {id(tls): tls for tls in certificates if tls is not None}
    for tls in unique.values():
        tls.reload()
    if not unique and say_if_none:
        log.info("SIGHUP: nothing to reload (no TLS certificate)")


def server_handshake(sock: socket.socket, tls: ServerTLS,
                     stop_fds: Sequence[int] = ()) -> ssl.SSLSocket | None:
    """Wrap an accepted client with the newest certificate and do the handshake.

    For the blocking modes, which run this where the client is served (its
    thread or child, or inline in iterative mode).  The whole handshake must
    finish within ``tls.handshake_timeout`` — a client trickling bytes cannot
    stretch it — and a readable ``stop_fds`` (the server drains) abandons it.
    Returns the non-blocking TLS socket, or None after closing the client.
    """
    deadline = time.monotonic() + tls.handshake_timeout
    try:
        sock.setblocking(False)
        wrapped = tls.current.wrap_socket(sock, server_side=True,
                                          do_handshake_on_connect=False)
    except OSError as exc:
        log.debug("TLS setup failed: %s", exc)
        sock.close()
        return None
    poller = select.poll()
    for fd in stop_fds:
        poller.register(fd, select.POLLIN)
    fd = wrapped.fileno()
    poller.register(fd, 0)
    while True:
        try:
            wrapped.do_handshake()
            return wrapped
        except ssl.SSLWantReadError:
            poller.modify(fd, select.POLLIN)
        except ssl.SSLWantWriteError:
            poller.modify(fd, select.POLLOUT)
        except OSError as exc:  # ssl.SSLError included: a bad client, or one gone
            log.debug("TLS handshake failed: %s", exc)
            break
        left = deadline - time.monotonic()
        if left <= 0:
            log.debug("TLS handshake timed out")
            break
        events = poller.poll(math.ceil(left * 1000))
        if any(ready != fd for ready, _ in events):
            break  # the server is stopping
    wrapped.close()
    return None
