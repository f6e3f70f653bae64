"""Endpoints: parse ``host:port`` strings and resolve service names to ports.

Accepted forms (SPEC §2.1): ``PORT``, ``HOST:PORT``, ``[IPV6]:PORT``,
``HOST:SERVICENAME``, ``:PORT`` and ``unix:/path``.  A service name resolves
through tcpkit's registry first (``reverse`` → 7800, ``factor`` → 7801), then
the system services database (``echo`` → 7).  Parsing never touches the
network; only :func:`resolve_port` reads ``/etc/services``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from tcpkit import registry
from tcpkit.errors import Error


class EndpointError(Error, ValueError):
    """An endpoint string that cannot be understood; the message says why."""


FORMS = "PORT, HOST:PORT, [IPV6]:PORT, HOST:SERVICENAME or unix:/path"


def _bad(text: str, problem: str) -> EndpointError:
    """What is wrong with ``text``, then the forms an endpoint may take."""
    return EndpointError(f"bad endpoint {text!r}: {problem} (accepted: {FORMS})")


@dataclass(frozen=True)
class Endpoint:
    """Where to listen or connect: a host and port, or a unix socket path.

    ``host`` is ``None`` when the text named none: servers then listen on every
    interface and clients connect to ``localhost``.
    """

    host: str | None = None
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return format_address(self.host or "", self.port)


def format_address(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed, as users type them."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts superscripts (int() refuses them)
    and other scripts' digits (which nobody means as a port number)."""
    return text.isascii() and text.isdigit()


def resolve_port(name: str) -> int:
    """A port number from digits or a service name (registry, then /etc/services)."""
    if is_number(name):
        port = int(name)
        if port > 65535:
            raise EndpointError(f"port out of range: {name} (0-65535)")
        return port
    if name in registry.services():
        return registry.services()[name].port
    try:
        return socket.getservbyname(name, "tcp")
    except (OSError, ValueError):  # ValueError: a NUL or an unencodable character
        raise EndpointError(f"unknown port or service name: {name!r}") from None


def parse_endpoint(text: str, default_port: int | None = None) -> Endpoint:
    """Parse an endpoint string; ``default_port`` allows a bare ``HOST``."""
    text = text.strip()
    if not text:
        raise EndpointError(f"empty endpoint (accepted: {FORMS})")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise EndpointError("unix: endpoint needs a path, e.g. unix:/run/tcpkit.sock")
        return Endpoint(path=path)
    if text.startswith("["):
        return _parse_bracketed(text, default_port)
    if is_number(text):
        return Endpoint(port=resolve_port(text))
    host, sep, port = text.rpartition(":")
    if not sep:
        if _NUMBERISH.fullmatch(text):
            raise _bad(text, "a port is a whole number from 0 to 65535")
        if default_port is None:
            raise _bad(text, f"needs a port (try {text}:PORT)")
        return Endpoint(host=text, port=default_port)
    if ":" in host:
        if _is_ipv6(host) or _is_ipv6(text):
            raise _bad(text, f"IPv6 addresses need brackets: [{host}]:{port}")
        raise _bad(text, "a host name has no ':' (only a bracketed IPv6 address does)")
    if not port:
        raise _bad(text, "empty port")
    return Endpoint(host=host or None, port=resolve_port(port))


_NUMBERISH = re.compile(r"[+-][0-9]+")  # a signed number: meant as a port, not a host


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _parse_bracketed(text: str, default_port: int | None) -> Endpoint:
    host, sep, rest = text[1:].partition("]")
    if not sep or not host:
        raise _bad(text, "bad IPv6 endpoint, expected [ADDRESS]:PORT")
    if not rest:
        if default_port is None:
            raise _bad(text, f"needs a port (try {text}:PORT)")
        return Endpoint(host=host, port=default_port)
    if not rest.startswith(":") or len(rest) == 1:
        raise _bad(text, "bad IPv6 endpoint, expected [ADDRESS]:PORT")
    return Endpoint(host=host, port=resolve_port(rest[1:]))


def peer_text(address: object) -> tuple[str, int]:
    """(host, port) of a peer address, with IPv4-mapped IPv6 shown as IPv4."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), int(address[1])
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]
        return host, port
    if address is None:  # the client reset the connection before we could ask
        return "unknown", 0
    return "unix", 0  # unix sockets have no peer address

