"""The PROXY protocol header (HAProxy's, versions 1 and 2), sans-IO.

A proxy in TCP mode (HAProxy with ``send-proxy`` / ``send-proxy-v2``) opens
every connection to us itself, so the socket's peer is always the proxy.  The
PROXY protocol puts one header in front of the client's bytes that names the
real client; everything that uses a peer address (limits, access lists, logs,
metrics) must use that one instead.

:class:`HeaderReader` is fed the first bytes of a connection and answers
"need more", a :class:`ProxyHeader`, or raises :class:`ProxyHeaderError`.  It
owns no socket and no clock: the serving mode reads, applies the timeout, and
closes on an error; the parser is the same for every mode and is tested and
fuzzed without a network.  Memory is bounded by ``max_size``: a sender that
never completes a header is refused once it has sent that much.

The rules follow the specification (haproxy.org/download/2.9/doc/proxy-protocol.txt)
strictly, as it asks a receiver to: "Any sequence which does not exactly match
the protocol must be discarded and cause the receiver to abort the connection".
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from tcpkit.errors import Error

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest valid line, CRLF included (the spec's worst case)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length
# Both formats were designed to fit the smallest TCP segment (536 bytes); TLVs
# can make a v2 header longer, so the default leaves room for HAProxy's (ssl,
# unique-id, authority, netns) while keeping a stalled sender's memory small.
DEFAULT_MAX_SIZE = 4096

LOCAL, PROXY, UNKNOWN = "LOCAL", "PROXY", "UNKNOWN"  # ProxyHeader.command
TLV_CRC32C, TLV_NOOP = 0x03, 0x04

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V4_CHARS = frozenset(b"0123456789.")
_V6_CHARS = frozenset(b"0123456789abcdefABCDEF:")
# v2 family/transport byte: (address family, transport) -> address block size.
_V2_INET, _V2_INET6, _V2_UNIX = 0x1, 0x2, 0x3
_V2_ADDRESS_SIZE = {_V2_INET: 12, _V2_INET6: 36, _V2_UNIX: 216}
_V2_STREAM, _V2_DGRAM = 0x1, 0x2

Address = tuple[str, int]


class ProxyHeaderError(Error, ValueError):
    """The bytes are not a valid PROXY header; the message says why (for the log)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header.

    ``source`` is the real client, ``destination`` the address it connected
    to.  Both are None for LOCAL (a proxy's own health check) and UNKNOWN (a
    proxied connection the proxy could not describe): the spec says to use the
    socket's own addresses then, which :meth:`client` does.
    """

    version: int  # 1 or 2
    command: str  # PROXY, LOCAL (v2) or UNKNOWN (v1, and v2 with family UNSPEC/UNIX)
    source: Address | None
    destination: Address | None
    length: int  # bytes of the header on the wire
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def client(self, socket_peer: Address) -> Address:
        """The address to serve this connection as: the header's, else the socket's."""
        return self.source if self.source is not None else socket_peer


def parse_header(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> ProxyHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed.

    Raises ProxyHeaderError as soon as the bytes cannot become a valid header
    (so a client that is not a proxy is told at its first byte, not at the
    timeout), or when more than ``max_size`` bytes would be needed.
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data, max_size)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data, max_size)
    if V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data):
        return None  # could still become either (an empty buffer included)
    raise ProxyHeaderError("no PROXY protocol header")


class HeaderReader:
    """Collect a connection's first bytes until its PROXY header is complete.

    ``feed`` returns the header once it has arrived (and keeps the bytes that
    followed it in :attr:`rest`, they belong to the client's protocol), None
    while it is incomplete, and raises ProxyHeaderError when it is invalid.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self.header: ProxyHeader | None = None
        self.rest = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self.header is not None:
            raise RuntimeError("the header is already complete")
        self._buffer += data
        try:
            header = parse_header(bytes(self._buffer), self.max_size)
        except ProxyHeaderError:
            self._buffer.clear()  # the connection is refused: hold nothing for it
            raise
        if header is not None:
            self.header = header
            self.rest = bytes(self._buffer[header.length :])
            self._buffer.clear()
        return header

    def peek(self, data: bytes) -> tuple[ProxyHeader | None, int]:
        """Like :meth:`feed`, for bytes still queued in the kernel (``MSG_PEEK``).

        Returns the header (or None) and how many of ``data`` to take off the
        socket: all of them while the header is incomplete (they can only be
        header), else exactly its last bytes.  What follows stays queued, so a
        TLS handshake or the service reads it from the socket as if no header
        had been there.
        """
        held = len(self._buffer)
        header = self.feed(data)
        if header is None:
            return None, len(data)
        self.rest = b""
        return header, header.length - held

    @property
    def buffered(self) -> int:
        """Bytes held while the header is incomplete (at most ``max_size``)."""
        return len(self._buffer)


# -- version 1: one line of text -------------------------------------------------------


def _parse_v1(data: bytes, max_size: int) -> ProxyHeader | None:
    limit = min(V1_MAX, max_size)
    end = data.find(b"\r\n", 0, limit)
    if end < 0:
        _v1_incomplete(data, limit)
        return None
    line = data[:end]
    if b"\r" in line or b"\n" in line:
        raise ProxyHeaderError("PROXY v1 line has a lone CR or LF")
    if not line.isascii():
        raise ProxyHeaderError("PROXY v1 line is not US-ASCII")
    fields = line.split(b" ")
    length = end + 2
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":  # the rest is to be ignored
        return ProxyHeader(1, UNKNOWN, None, None, length)
    if len(fields) != 6:
        raise ProxyHeaderError(f"PROXY v1 line has {len(fields)} fields, not 6: {_show(line)}")
    _, family, src, dst, sport, dport = fields
    if family == b"TCP4":
        host_of = _v1_ipv4
    elif family == b"TCP6":
        host_of = _v1_ipv6
    else:
        raise ProxyHeaderError(f"PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN: {_show(family)}")
    source = (host_of(src), _v1_port(sport))
    destination = (host_of(dst), _v1_port(dport))
    return ProxyHeader(1, PROXY, source, destination, length)


def _v1_incomplete(data: bytes, limit: int) -> None:
    """Raise if ``data`` (no CRLF yet) can no longer become a valid line."""
    head = data[:limit]
    cr = head.find(b"\r")
    if b"\n" in head or (cr >= 0 and cr + 1 < len(head)):
        raise ProxyHeaderError("PROXY v1 line has a lone CR or LF")
    if len(data) >= limit:
        raise ProxyHeaderError(f"PROXY v1 line longer than {limit} bytes")
    if not head.isascii():
        raise ProxyHeaderError("PROXY v1 line is not US-ASCII")


def _v1_ipv4(text: bytes) -> str:
    # ipaddress refuses leading zeros ("octal"), as the spec does.
    if not text or not _V4_CHARS.issuperset(text):
        raise ProxyHeaderError(f"PROXY v1 TCP4 address is not dotted decimal: {_show(text)}")
    try:
        return str(ipaddress.IPv4Address(text.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 bad IPv4 address: {_show(text)}") from None


def _v1_ipv6(text: bytes) -> str:
    # Hex groups and colons only: no embedded dotted quad, no %scope.
    if not text or not _V6_CHARS.issuperset(text):
        raise ProxyHeaderError(f"PROXY v1 TCP6 address is not hexadecimal: {_show(text)}")
    try:
        return _host(ipaddress.IPv6Address(text.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 bad IPv6 address: {_show(text)}") from None


def _v1_port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 bad port: {_show(text)}")
    return int(text)


# -- version 2: binary ------------------------------------------------------------------


def _parse_v2(data: bytes, max_size: int) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        # The version/command and family bytes can be judged before the length.
        if len(data) > 12:
            _v2_version_command(data[12])
        if len(data) > 13:
            _v2_family(data[13])
        return None
    command = _v2_version_command(data[12])
    family, transport = _v2_family(data[13])
    (block,) = struct.unpack_from("!H", data, 14)
    length = V2_FIXED + block
    if length > max_size:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (max {max_size})")
    if len(data) < length:
        return None
    body = data[V2_FIXED:length]
    needed = _V2_ADDRESS_SIZE.get(family, 0)
    if command == LOCAL:  # a health check: "discard the protocol block"
        return ProxyHeader(2, LOCAL, None, None, length)
    if len(body) < needed:
        raise ProxyHeaderError(f"PROXY v2 address block of {len(body)} bytes, "
                               f"family needs {needed}")
    tlvs = _v2_tlvs(body[needed:])
    _v2_check_crc(data[:length], tlvs, needed)
    if family in (_V2_INET, _V2_INET6) and transport == _V2_STREAM:
        source, destination = _v2_addresses(family, body)
        return ProxyHeader(2, PROXY, source, destination, length, tlvs)
    if transport == _V2_DGRAM:
        raise ProxyHeaderError("PROXY v2 header for a datagram connection on a TCP server")
    # UNSPEC, or a unix socket: no IP address to use; the spec says fall back.
    return ProxyHeader(2, UNKNOWN, None, None, length, tlvs)


def _v2_version_command(byte: int) -> str:
    if byte >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 version {byte >> 4} (only 2 exists)")
    command = byte & 0x0F
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 unknown command {command}")
    return PROXY if command else LOCAL


def _v2_family(byte: int) -> tuple[int, int]:
    family, transport = byte >> 4, byte & 0x0F
    if family > _V2_UNIX:
        raise ProxyHeaderError(f"PROXY v2 unknown address family {family}")
    if transport > _V2_DGRAM:
        raise ProxyHeaderError(f"PROXY v2 unknown transport {transport}")
    return family, transport


def _v2_addresses(family: int, body: bytes) -> tuple[Address, Address]:
    if family == _V2_INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ((str(ipaddress.IPv4Address(src)), sport),
                (str(ipaddress.IPv4Address(dst)), dport))
    src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
    return ((_host(ipaddress.IPv6Address(src)), sport),
            (_host(ipaddress.IPv6Address(dst)), dport))


def _v2_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The type-length-value vectors after the addresses; they must fill it exactly."""
    tlvs = []
    at = 0
    while at < len(data):
        if at + 3 > len(data):
            raise ProxyHeaderError("PROXY v2 truncated TLV")
        kind, size = data[at], int.from_bytes(data[at + 1 : at + 3], "big")
        if at + 3 + size > len(data):
            raise ProxyHeaderError(f"PROXY v2 TLV 0x{kind:02x} overruns the header")
        tlvs.append((kind, data[at + 3 : at + 3 + size]))
        at += 3 + size
    return tuple(tlvs)


def _v2_check_crc(header: bytes, tlvs: tuple[tuple[int, bytes], ...], addresses: int) -> None:
    """Verify a CRC32C TLV, as the spec requires of a receiver that supports it."""
    at = V2_FIXED + addresses
    for kind, value in tlvs:
        if kind == TLV_CRC32C:
            if len(value) != 4:
                raise ProxyHeaderError("PROXY v2 CRC32C TLV is not 4 bytes")
            zeroed = header[: at + 3] + b"\0\0\0\0" + header[at + 7 :]
            if crc32c(zeroed) != int.from_bytes(value, "big"):
                raise ProxyHeaderError("PROXY v2 CRC32C mismatch")
        at += 3 + len(value)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 appendix B): a header of at most a few KB, once."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- both --------------------------------------------------------------------------------


def _host(address: ipaddress.IPv6Address) -> str:
    """An IPv6 address as text, an IPv4-mapped one as plain IPv4 (as peer_text shows it)."""
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def _show(text: bytes) -> str:
    """Untrusted bytes, short and printable, for an error message."""
    return repr(text[:40].decode("ascii", "replace"))
