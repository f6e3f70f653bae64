"""The PROXY protocol parser (serving/guards/proxy.py), without a socket.

Every example of the specification, written out byte by byte; the limits it
states (107 bytes for v1, the v2 length field); every malformed form we know
of; the same answer whatever the chunking; and hypothesis for the rest.  The
servers' use of it, with HAProxy and with raw bytes, is in test_ops_proxy.py.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.proxy import PROXY_V2_SIGNATURE, proxy_v1, proxy_v2
from tcpkit.serving.guards.proxy import (
    DEFAULT_MAX_SIZE,
    LOCAL,
    PROXY,
    UNKNOWN,
    V1_MAX,
    HeaderReader,
    ProxyHeader,
    ProxyHeaderError,
    crc32c,
    parse_header,
)

# -- the specification's examples, byte by byte ----------------------------------------

SPEC_V1_HTTP = (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
                b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n")
V1_TCP4_LONGEST = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
V1_TCP6_LONGEST = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                   b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
V1_UNKNOWN_SHORT = b"PROXY UNKNOWN\r\n"
V1_WORST_CASE = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                 b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
# HAProxy's send-proxy-v2 for a TCP/IPv4 connection 172.19.0.1:42578 -> 172.19.0.3:80,
# as captured on the wire, followed by the client's first bytes.
V2_CAPTURED = bytes.fromhex("0d0a0d0a000d0a515549540a2111000c"
                            "ac130001ac130003a6520050") + b"GET / HTTP/1.1\r\n"
V2_LOCAL = PROXY_V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_the_spec_lengths_are_what_it_says() -> None:
    assert (len(V1_TCP4_LONGEST), len(V1_TCP6_LONGEST)) == (56, 104)
    assert (len(V1_UNKNOWN_SHORT), len(V1_WORST_CASE)) == (15, 107) == (15, V1_MAX)


def test_v1_spec_example_before_http() -> None:
    reader = HeaderReader()
    header = reader.feed(SPEC_V1_HTTP)
    assert header == ProxyHeader(1, PROXY, ("192.168.0.1", 56324), ("192.168.0.11", 443), 47)
    assert reader.rest == b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


@pytest.mark.parametrize(("line", "source", "destination"), [
    (V1_TCP4_LONGEST, ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    (V1_TCP6_LONGEST, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 7800\r\n", ("0.0.0.0", 0), ("10.0.0.1", 7800)),
    (b"PROXY TCP6 2001:DB8::1 ::1 1 2\r\n", ("2001:db8::1", 1), ("::1", 2)),
    # An IPv4 client of a dual-stack proxy: shown as IPv4, as peer_text shows it.
    (b"PROXY TCP6 ::ffff:c000:201 ::1 5 6\r\n", ("192.0.2.1", 5), ("::1", 6)),
])
def test_v1_tcp_lines(line: bytes, source: tuple[str, int],
                      destination: tuple[str, int]) -> None:
    assert parse_header(line) == ProxyHeader(1, PROXY, source, destination, len(line))


@pytest.mark.parametrize("line", [V1_UNKNOWN_SHORT, V1_WORST_CASE,
                                  b"PROXY UNKNOWN anything at all\r\n"])
def test_v1_unknown_ignores_the_rest_of_the_line(line: bytes) -> None:
    header = parse_header(line + b"hello\n")
    assert header == ProxyHeader(1, UNKNOWN, None, None, len(line))
    assert header.client(("10.9.8.7", 1234)) == ("10.9.8.7", 1234)


def test_v2_captured_from_haproxy() -> None:
    reader = HeaderReader()
    header = reader.feed(V2_CAPTURED)
    assert header == ProxyHeader(2, PROXY, ("172.19.0.1", 42578), ("172.19.0.3", 80), 28)
    assert header.client(("127.0.0.1", 5)) == ("172.19.0.1", 42578)
    assert reader.rest == b"GET / HTTP/1.1\r\n"


def test_v2_tcp6() -> None:
    data = proxy_v2(("2001:db8::7", 4000), ("2001:db8::1", 7800))
    assert data[12:16] == b"\x21\x21\x00\x24"  # PROXY, TCP over IPv6, 36 bytes
    assert parse_header(data) == ProxyHeader(2, PROXY, ("2001:db8::7", 4000),
                                             ("2001:db8::1", 7800), 52)


def test_v2_local_is_a_health_check_served_as_the_proxy_itself() -> None:
    header = parse_header(V2_LOCAL)
    assert header == ProxyHeader(2, LOCAL, None, None, 16)
    assert header.client(("127.0.0.1", 999)) == ("127.0.0.1", 999)
    # "must not assume zero is presented for LOCAL": the length is still skipped.
    padded = PROXY_V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12) + b"rest"
    reader = HeaderReader()
    assert reader.feed(padded) == ProxyHeader(2, LOCAL, None, None, 28)
    assert reader.rest == b"rest"


@pytest.mark.parametrize("family", [0x00, 0x31])  # UNSPEC; a unix stream socket
def test_v2_proxy_without_an_ip_address_falls_back_to_the_socket(family: int) -> None:
    block = bytes(216 if family == 0x31 else 0)
    data = PROXY_V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(block)) + block
    assert parse_header(data) == ProxyHeader(2, UNKNOWN, None, None, len(data))


def test_v2_tlvs_are_parsed_and_kept() -> None:
    tlvs = [(0x01, b"h2"), (0x02, b"example.com"), (0x04, b""), (0xE0, b"\x00" * 300)]
    header = parse_header(proxy_v2(("192.0.2.1", 1), tlvs=tlvs))
    assert header is not None and header.tlvs == tuple(tlvs)


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value


def with_crc(source: tuple[str, int], corrupt: bool = False) -> bytes:
    data = bytearray(proxy_v2(source, tlvs=[(0x03, bytes(4)), (0x05, b"id-1")]))
    checksum = crc32c(bytes(data)) ^ (1 if corrupt else 0)
    data[28 + 3 : 28 + 7] = checksum.to_bytes(4, "big")  # 16 fixed + 12 addresses
    return bytes(data)


def test_v2_crc32c_is_verified() -> None:
    header = parse_header(with_crc(("192.0.2.9", 9)))
    assert header is not None and header.source == ("192.0.2.9", 9)
    with pytest.raises(ProxyHeaderError, match="CRC32C mismatch"):
        parse_header(with_crc(("192.0.2.9", 9), corrupt=True))


# -- malformed headers: refused, with a reason --------------------------------------------

V2 = PROXY_V2_SIGNATURE
MALFORMED = [
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00\x01", "no PROXY protocol header"),  # a TLS ClientHello
    (b"42\n", "no PROXY protocol header"),
    (b"PROXY\r\n", "no PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "lone CR or LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", None),  # incomplete, then the next byte
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "lone CR or LF"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "7 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "7 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "5 fields"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not dotted decimal"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not hexadecimal"),
    (b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n", "not hexadecimal"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not hexadecimal"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "not US-ASCII"),
    (b"PROXY UNKNOWN \xff\r\n", "not US-ASCII"),
    (V1_WORST_CASE[:-2] + b"0\r\n", "longer than 107 bytes"),
    (b"PROXY " + b"A" * 200, "longer than 107 bytes"),
    (V2 + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
    (V2 + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
    (V2 + b"\x21\x41\x00\x0c" + bytes(12), "unknown address family 4"),
    (V2 + b"\x21\x13\x00\x0c" + bytes(12), "unknown transport 3"),
    (V2 + b"\x21\x12\x00\x0c" + bytes(12), "datagram"),
    (V2 + b"\x21\x11\x00\x08" + bytes(8), "address block of 8 bytes"),
    (V2 + b"\x21\x21\x00\x0c" + bytes(12), "address block of 12 bytes"),
    (V2 + b"\x21\x11\xff\xff", "header of 65551 bytes"),
    (V2 + b"\x21\x11\x00\x0e" + bytes(14), "truncated TLV"),
    (V2 + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x05x", "overruns the header"),
    (proxy_v2(("1.2.3.4", 1), tlvs=[(0x03, b"abc")]), "CRC32C TLV is not 4 bytes"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_headers_are_refused_with_a_reason(data: bytes, reason: str | None) -> None:
    if reason is None:  # a prefix of something valid: wait; a wrong next byte: refuse
        assert parse_header(data) is None
        with pytest.raises(ProxyHeaderError, match="lone CR or LF"):
            parse_header(data + b"x")
        return
    with pytest.raises(ProxyHeaderError, match=reason):
        parse_header(data)


def test_refused_as_soon_as_it_cannot_be_a_header() -> None:
    """A client that is not a proxy is told at its first wrong byte, not at a timeout."""
    for first in (b"G", b"4", b"\x16", b"\x00", b"p"):
        with pytest.raises(ProxyHeaderError):
            HeaderReader().feed(first)
    with pytest.raises(ProxyHeaderError, match="version 3"):
        HeaderReader().feed(V2 + b"\x31")  # before the length has arrived
    with pytest.raises(ProxyHeaderError, match="header of 65551 bytes"):
        HeaderReader().feed(V2 + b"\x21\x11\xff\xff")  # before the 65535 bytes


# -- chunking, size cap -----------------------------------------------------------------

VALID = [SPEC_V1_HTTP, V1_TCP4_LONGEST, V1_TCP6_LONGEST, V1_UNKNOWN_SHORT + b"x\n",
         V1_WORST_CASE, V2_CAPTURED, V2_LOCAL + b"42\n", with_crc(("10.0.0.1", 2)),
         proxy_v2(("2001:db8::7", 4000), tlvs=[(0x02, b"a" * 100)]) + b"\x16\x03\x01"]


def feed_in_chunks(data: bytes, size: int, max_size: int = DEFAULT_MAX_SIZE
                   ) -> tuple[ProxyHeader | None, bytes]:
    reader = HeaderReader(max_size)
    for at in range(0, len(data), size):
        header = reader.feed(data[at : at + size])
        assert reader.buffered <= max_size
        if header is not None:
            return header, reader.rest + data[at + size :]
    return None, b""


@pytest.mark.parametrize("data", VALID)
def test_every_chunk_size_gives_the_same_header_and_rest(data: bytes) -> None:
    whole = parse_header(data)
    assert whole is not None
    for size in range(1, len(data) + 1):
        assert feed_in_chunks(data, size) == (whole, data[whole.length :]), size


@pytest.mark.parametrize("data", VALID)
def test_byte_by_byte_every_prefix_waits(data: bytes) -> None:
    whole = parse_header(data)
    assert whole is not None
    for end in range(whole.length):
        assert parse_header(data[:end]) is None, end


@pytest.mark.parametrize(("data", "reason"), [m for m in MALFORMED if m[1] is not None])
def test_every_chunk_size_refuses_a_malformed_header(data: bytes, reason: str) -> None:
    for size in range(1, len(data) + 1):
        with pytest.raises(ProxyHeaderError):
            feed_in_chunks(data, size)


def test_the_size_cap_bounds_what_is_held() -> None:
    big = proxy_v2(("10.0.0.1", 1), tlvs=[(0xE0, bytes(DEFAULT_MAX_SIZE))])
    with pytest.raises(ProxyHeaderError, match=f"max {DEFAULT_MAX_SIZE}"):
        feed_in_chunks(big, 1)
    small = proxy_v2(("10.0.0.1", 1), tlvs=[(0xE0, bytes(100))])
    assert feed_in_chunks(small, 7, max_size=len(small))[0] is not None
    with pytest.raises(ProxyHeaderError, match=f"max {len(small) - 1}"):
        feed_in_chunks(small, 7, max_size=len(small) - 1)
    with pytest.raises(ProxyHeaderError, match="longer than 20 bytes"):
        feed_in_chunks(V1_TCP4_LONGEST, 1, max_size=20)


def test_a_finished_reader_is_not_fed_again() -> None:
    reader = HeaderReader()
    assert reader.feed(V2_LOCAL) is not None
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


# -- properties ---------------------------------------------------------------------------

IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
PORT = st.integers(0, 65535)
TLVS = st.lists(st.tuples(st.integers(0, 255).filter(lambda k: k != 0x03),
                          st.binary(max_size=50)), max_size=5)


@given(st.one_of(st.tuples(IPV4, IPV4), st.tuples(IPV6, IPV6)), PORT, PORT,
       st.booleans(), TLVS, st.binary(max_size=30))
def test_what_a_proxy_sends_is_what_we_read(hosts: tuple[str, str], sport: int, dport: int,
                                            binary: bool, tlvs: list[tuple[int, bytes]],
                                            after: bytes) -> None:
    source, destination = (hosts[0], sport), (hosts[1], dport)
    data = proxy_v2(source, destination, tlvs) if binary else proxy_v1(source, destination)
    reader = HeaderReader()
    header = reader.feed(data + after)
    assert header is not None
    assert (header.source, header.destination) == (source, destination)
    assert header.tlvs == (tuple(tlvs) if binary else ())
    assert reader.rest == after


@given(st.binary(max_size=300), st.integers(1, 300))
def test_any_bytes_give_a_header_a_wait_or_a_refusal_whatever_the_chunks(
        data: bytes, size: int) -> None:
    try:
        whole: ProxyHeader | str | None = parse_header(data)
    except ProxyHeaderError as exc:
        whole = str(exc)
        assert whole
    try:
        chunked: ProxyHeader | str | None = feed_in_chunks(data, size)[0]
    except ProxyHeaderError:
        chunked = "refused"
    if isinstance(whole, ProxyHeader):
        assert chunked == whole
    elif isinstance(whole, str):
        assert chunked == "refused"
    else:
        assert chunked is None


@settings(max_examples=300)
@given(st.sampled_from(VALID), st.data())
def test_mutated_headers_never_break_the_parser(data: bytes, draw: st.DataObject) -> None:
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = draw.draw(st.integers(0, 255))
    try:
        header = parse_header(bytes(mutated))
    except ProxyHeaderError:
        return
    if header is not None:
        assert header.length <= len(mutated)
        for address in (header.source, header.destination):
            assert address is None or 0 <= address[1] <= 65535


def test_a_refused_reader_holds_nothing() -> None:
    """Found by fuzz_proxy: a refusal kept the whole first read buffered."""
    reader = HeaderReader(max_size=64)
    with pytest.raises(ProxyHeaderError):
        reader.feed(proxy_v2(("10.0.0.1", 1))[:15] + b"\xff" + b"\xf2" * 500)
    assert reader.buffered == 0


# -- peeking: the header off a real socket, and not a byte more ---------------------------


@pytest.mark.parametrize("data", VALID)
def test_peek_takes_exactly_the_header_whatever_the_chunks(data: bytes) -> None:
    whole = parse_header(data)
    assert whole is not None
    for size in (1, 2, 5, 16, len(data)):
        reader, taken, header = HeaderReader(), 0, None
        for at in range(0, len(data), size):
            # The kernel queue holds everything sent but not taken yet.
            header, take = reader.peek(data[taken : at + size])
            taken += take
            if header is not None:
                break
        assert header == whole and taken == whole.length, size


def test_pending_header_leaves_the_rest_on_the_socket() -> None:
    import socket

    from tcpkit.serving.guards.proxied import PendingHeader

    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        pending = PendingHeader(ours, HeaderReader(), deadline=0.0)
        assert pending.read() is None  # nothing yet: wait
        header = proxy_v2(("192.0.2.1", 5000))
        theirs.sendall(header[:10])
        assert pending.read() is None and pending.reader.buffered == 10
        theirs.sendall(header[10:] + b"\x16\x03\x01hello")
        assert pending.read() == parse_header(header)
        assert ours.recv(100) == b"\x16\x03\x01hello"  # the TLS layer's bytes, untouched
        assert pending.expired(0.0)
        second = PendingHeader(ours, HeaderReader(), deadline=1.0)
        theirs.close()
        with pytest.raises(ProxyHeaderError, match="closed before its PROXY header"):
            second.read()
