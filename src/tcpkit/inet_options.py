"""``IO::Socket::INET->new``'s options, checked and turned into a socket.

:meth:`tcpkit.sockets.INETSocket.new` takes Perl's option names.  Each is
either honoured as Perl's ``configure`` honours it (Perl 5's IO::Socket::INET
1.49, read line by line) or refused with a ``ValueError`` that names it;
an unknown name is refused too, so a typo never fails silently.  Perl's rules:

* ``Listen`` makes a listening socket (then PeerAddr is ignored by Perl:
  here it is refused, since it cannot mean anything); else ``PeerAddr``
  connects; else the socket is only made (and bound, given a local address).
* The local end is bound only when a LocalAddr/LocalPort is given, or to
  listen; a client with a local address binds before connecting.
* ``SO_REUSEADDR``, ``SO_REUSEPORT`` and ``SO_BROADCAST`` are set only when
  asked for; ``Timeout`` bounds ``connect`` and ``accept``, not reads.
* A port is a number, a service name or ``name(number)`` (the number when
  the name is unknown); ``host:port`` in PeerAddr/LocalAddr carries one.

Beyond Perl's IPv4-only INET: IPv6 addresses work (``[::1]:7800``), and a
socket with no local address listens on every interface of both families.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from tcpkit.endpoints import EndpointError, format_address, resolve_port

OPTIONS = ("PeerAddr", "PeerHost", "PeerPort", "LocalAddr", "LocalHost", "LocalPort",
           "Proto", "Type", "Listen", "ReuseAddr", "Reuse", "ReusePort", "Broadcast",
           "Timeout", "MultiHomed", "Blocking")
PROTOCOLS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
_PORT_IN_ADDRESS = re.compile(r"(.*):([\w()/]+)")  # Perl's s,:([\w\(\)/]+)$,,
_NAMED_PORT = re.compile(r"(.+)\((\d+)\)")  # "name(7800)": the number if the name is unknown


@dataclass(frozen=True)
class Plan:
    """What ``new`` was asked to make, every option checked."""

    kind: int  # socket.SOCK_STREAM or socket.SOCK_DGRAM
    peer: tuple[str, int] | None
    local_host: str | None
    local_port: int | None
    listen: int | None  # the backlog when listening
    reuse_addr: bool
    reuse_port: bool
    broadcast: bool
    timeout: float | None
    multihomed: bool
    blocking: bool

    @property
    def proto(self) -> str:
        return "tcp" if self.kind == socket.SOCK_STREAM else "udp"


def plan(args: dict[str, Any]) -> Plan:
    """Check Perl's options (ValueError naming the bad one) and say what to make."""
    for name in args:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"IO::Socket::INET has no option {name!r}{hint}")
    args = dict(args)
    for synonym, name in (("PeerHost", "PeerAddr"), ("LocalHost", "LocalAddr")):
        if synonym in args and name in args:
            raise ValueError(f"give {name} or its synonym {synonym}, not both")
        if synonym in args:
            args[name] = args.pop(synonym)
    kind = _kind(args.get("Proto"), args.get("Type"))
    proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
    listen = _listen(args, kind)
    local_host, local_port = _address("LocalAddr", args.get("LocalAddr"), "LocalPort",
                                      args.get("LocalPort"), proto)
    peer = None
    if "PeerAddr" in args:
        host, port = _address("PeerAddr", args["PeerAddr"], "PeerPort",
                              args.get("PeerPort"), proto)
        if host is None or port is None:
            raise ValueError(f"PeerAddr {args['PeerAddr']!r} needs a port: give PeerPort "
                             "or 'host:port'")
        peer = (host, port)
    elif "PeerPort" in args:
        raise ValueError("PeerPort without PeerAddr: give the host to connect to")
    return Plan(kind, peer, local_host, local_port, listen,
                _flag(args, "ReuseAddr") or _flag(args, "Reuse"), _flag(args, "ReusePort"),
                _flag(args, "Broadcast"), check_timeout(args.get("Timeout")),
                _flag(args, "MultiHomed"), _flag(args, "Blocking", default=True))


def _kind(proto: object, kind: object) -> int:
    """SOCK_STREAM or SOCK_DGRAM from Proto and Type (Perl derives one from the other)."""
    by_proto = None
    if proto is not None:
        name = {6: "tcp", 17: "udp"}.get(proto, proto) if isinstance(proto, int) else proto
        if not isinstance(name, str) or name.lower() not in PROTOCOLS:
            raise ValueError(f"Proto {proto!r}: tcpkit makes 'tcp' and 'udp' sockets only")
        by_proto = PROTOCOLS[name.lower()]
    if kind is None:
        return socket.SOCK_STREAM if by_proto is None else by_proto
    if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"Type {kind!r}: tcpkit makes SOCK_STREAM and SOCK_DGRAM sockets only")
    chosen = socket.SOCK_STREAM if kind == socket.SOCK_STREAM else socket.SOCK_DGRAM
    if by_proto is not None and chosen != by_proto:
        raise ValueError(f"Type {kind!r} contradicts Proto {proto!r}")
    return chosen


def _listen(args: dict[str, Any], kind: int) -> int | None:
    if "Listen" not in args:
        return None
    backlog = args["Listen"]
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 0:
        raise ValueError(f"Listen {backlog!r}: the queue size is a whole number")
    if kind != socket.SOCK_STREAM:
        raise ValueError("Listen needs a TCP socket: a UDP socket cannot listen")
    if "PeerAddr" in args:
        raise ValueError("Listen and PeerAddr: a socket either listens or connects")
    return backlog or 5  # Perl: listen($arg->{Listen} || 5)


def _address(name: str, value: object, port_name: str, port: object,
             proto: str) -> tuple[str | None, int | None]:
    """(host, port) from ``host[:port]`` and a separate port option."""
    host = None
    if value is not None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} {value!r}: expected 'host' or 'host:port'")
        host, embedded = split_host(value)
        if embedded is not None:
            if port is not None and port_number(port_name, port, proto) != \
                    port_number(name, embedded, proto):
                raise ValueError(f"{name} {value!r} and {port_name} {port!r} name two ports")
            port = embedded
    return host, None if port is None else port_number(port_name, port, proto)


def split_host(text: str) -> tuple[str, str | None]:
    """``host:port``, ``[v6]:port``, ``[v6]``, a bare IPv6 address, or a host alone."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and len(rest) > 1 else None
    try:
        if ipaddress.ip_address(text).version == 6:
            return text, None
    except ValueError:
        pass
    found = _PORT_IN_ADDRESS.fullmatch(text)
    return (found.group(1), found.group(2)) if found else (text, None)


def port_number(name: str, value: object, proto: str = "tcp") -> int:
    """A port from a number, a service name, or Perl's ``name(number)`` fallback."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 65535:
            return value
        raise ValueError(f"{name} {value}: a port is 0-65535")
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r}: expected a port number or service name")
    fallback = _NAMED_PORT.fullmatch(value)
    text = fallback.group(1) if fallback else value
    try:
        return resolve_port(text) if proto == "tcp" or text.isdigit() else \
            socket.getservbyname(text, proto)
    except (EndpointError, OSError) as exc:
        if fallback:
            return port_number(name, int(fallback.group(2)), proto)
        reason = str(exc) if isinstance(exc, EndpointError) else f"unknown {proto} service"
        raise ValueError(f"{name} {value!r}: {reason}") from None


def _flag(args: dict[str, Any], name: str, default: bool = False) -> bool:
    value = args.get(name, default)
    if value is None or isinstance(value, bool | int):
        return bool(value)
    raise ValueError(f"{name} {value!r}: expected true or false (1 or 0)")


def check_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Timeout {value!r}: a number of seconds above 0")
    return float(value)


# -- making the socket ---------------------------------------------------------------


def open_socket(plan: Plan) -> socket.socket:
    """The socket ``plan`` describes (OSError with a message for the user on failure)."""
    if plan.peer is not None:
        return _client(plan, *plan.peer)
    if plan.listen is None and plan.local_host is None and plan.local_port is None:
        sock = socket.socket(socket.AF_INET, plan.kind)  # made, not bound (as Perl)
        _prepare(sock, plan)
        return sock
    return _local(plan)


def _prepare(sock: socket.socket, plan: Plan) -> None:
    """The options Perl sets before binding."""
    if plan.reuse_addr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if plan.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if plan.broadcast:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)


def _local(plan: Plan) -> socket.socket:
    """A bound (and, for Listen, listening) socket."""
    port = plan.local_port or 0
    shown = format_address(plan.local_host or "", port)
    try:
        sock = _bound(plan, plan.local_host, port)
        if plan.listen is not None:
            sock.listen(plan.listen)
    except OSError as exc:
        verb = "listen on" if plan.listen is not None else "bind to"
        raise OSError(f"cannot {verb} {shown}: {_why(exc)}") from None
    sock.setblocking(plan.blocking)
    return sock


def _bound(plan: Plan, host: str | None, port: int,
           family: int | None = None) -> socket.socket:
    """A socket bound to ``host`` (every interface of both families when None)."""
    candidates: list[tuple[int, Any]]
    if host is None:
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
        if family is not None:
            candidates = [c for c in candidates if c[0] == family]
    else:
        infos = socket.getaddrinfo(host, port, family or 0, plan.kind, 0, socket.AI_PASSIVE)
        candidates = [(infos[0][0], infos[0][4])]
    for index, (chosen, address) in enumerate(candidates):
        sock = socket.socket(chosen, plan.kind)
        try:
            _prepare(sock, plan)
            if chosen == socket.AF_INET6 and host is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            # No usable IPv6 here: fall back to IPv4; a port in use is a real answer.
            if index + 1 == len(candidates) or exc.errno == errno.EADDRINUSE:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _client(plan: Plan, host: str, port: int) -> socket.socket:
    """Connect to ``host``'s address, or to the first of them that answers (MultiHomed).

    Perl's INET resolves IPv4 only, so without MultiHomed the first IPv4
    address is the one (``localhost`` is 127.0.0.1, as in Perl); a host with
    IPv6 addresses only is reached on its first.
    """
    shown = format_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, 0, plan.kind)
    except socket.gaierror as exc:
        raise OSError(f"cannot connect to {shown}: {exc.strerror}") from None
    if not plan.multihomed:
        infos = [next((i for i in infos if i[0] == socket.AF_INET), infos[0])]
    failure: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            if plan.local_host is not None or plan.local_port is not None:
                sock = _bound(plan, plan.local_host, plan.local_port or 0, family)
            else:
                sock = socket.socket(family, kind, proto)
                _prepare(sock, plan)
        except OSError as exc:
            raise OSError(f"cannot bind the client to "
                          f"{format_address(plan.local_host or '', plan.local_port or 0)}: "
                          f"{_why(exc)}") from None
        try:
            _connect(sock, address, plan)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
    assert failure is not None
    raise OSError(f"cannot connect to {shown}: {_why(failure)}") from None


def _connect(sock: socket.socket, address: Any, plan: Plan) -> None:
    """Connect within ``Timeout``; then reads block (Perl), or not at all (Blocking 0)."""
    if not plan.blocking and plan.timeout is None:
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise OSError(code, os.strerror(code))
        return  # connecting in the background, as Perl's non-blocking connect
    sock.settimeout(plan.timeout)
    sock.connect(address)
    sock.setblocking(plan.blocking)
    if plan.kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _why(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)
