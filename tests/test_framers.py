"""tcpkit.framers without sockets: whole, byte by byte, every chunk size, fuzzed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpkit.framers import Framer, Int32Prefixed, Lines, Netstrings


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def feed_all(framer: Framer, chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for chunk in chunks:
        out.extend(framer.feed_framed(chunk))
    return out


FRAMERS = [Lines, Netstrings, Int32Prefixed]
MESSAGES = [b"hello", b"", b"with space", b"\x00\xff binary", b"1:2,3"]


def wire(framer: Framer, messages: list[bytes]) -> bytes:
    return b"".join(framer.encode(m) for m in messages)


# -- every framer: encode then feed gives the messages back, in any chunking --


@pytest.mark.parametrize("make", [Netstrings, Int32Prefixed])
def test_round_trip_whole_and_byte_by_byte(make: type[Framer]) -> None:
    data = wire(make(), MESSAGES)
    assert make().feed(data) == MESSAGES
    framer = make()
    assert [m for b in data for m in framer.feed(bytes([b]))] == MESSAGES
    assert framer.buffered == 0 and not framer.failed


@pytest.mark.parametrize("make", [Netstrings, Int32Prefixed])
def test_every_chunk_size(make: type[Framer]) -> None:
    data = wire(make(), MESSAGES)
    for size in range(1, len(data) + 1):
        assert [m for m, _ in feed_all(make(), chunked(data, size))] == MESSAGES


@pytest.mark.parametrize("make", [Netstrings, Int32Prefixed])
@given(messages=st.lists(st.binary(max_size=40), max_size=8), size=st.integers(1, 50))
def test_fuzzed_round_trip(make: type[Framer], messages: list[bytes], size: int) -> None:
    data = wire(make(), messages)
    assert [m for m, _ in feed_all(make(), chunked(data, size))] == messages


@pytest.mark.parametrize("make", FRAMERS)
@given(junk=st.binary(max_size=300), size=st.integers(1, 64))
def test_junk_never_raises_and_stays_bounded(make: type[Framer], junk: bytes, size: int) -> None:
    framer = make().new(16)
    for chunk in chunked(junk, size):
        for message in framer.feed(chunk):
            assert len(message) <= 16
        assert framer.buffered <= 16 + 64 + 8  # the limit, one chunk, a header
    if framer.failed:
        assert framer.feed(b"5:hello,\n") == [] and framer.buffered == 0


# -- Lines -------------------------------------------------------------------


def test_lines_keep_their_terminators() -> None:
    framer = Lines()
    assert framer.feed_framed(b"one\ntwo\r\n\nthr") == [
        (b"one", b"\n"), (b"two", b"\r\n"), (b"", b"\n")]
    assert framer.buffered == 3
    assert framer.feed_eof() == b"thr"
    assert framer.encode(b"x", b"\r\n") == b"x\r\n"
    assert framer.encode(b"x") == b"x\n"
    assert Lines(newline=b"\r\n").encode(b"x") == b"x\r\n"


def test_lines_can_always_answer_with_their_own_newline() -> None:
    """SMTP-style: every line sent ends CR LF, even a reply to a bare-LF request."""
    framer = Lines(newline=b"\r\n", echo_terminator=False).new(64)
    assert framer.feed_framed(b"a\nb\r\n") == [(b"a", b"\n"), (b"b", b"\r\n")]
    assert framer.encode(b"x", b"\n") == framer.encode(b"x", b"\r\n") == b"x\r\n"
    assert framer.encode(b"x") == b"x\r\n"
    assert framer.limit == 64 and not framer.echo_terminator


@pytest.mark.parametrize("size", range(1, 20))
def test_lines_every_chunk_size(size: int) -> None:
    data = b"one\ntwo\r\n\nthree\r\r\n"
    assert [m for m, _ in feed_all(Lines(), chunked(data, size))] == [
        b"one", b"two", b"", b"three\r"]


def test_lines_overflow_is_reported_before_the_line_ends() -> None:
    framer = Lines().new(8)
    assert framer.feed(b"ok\n" + b"x" * 10) == [b"ok"]  # 9 may be 8 + a CR
    assert framer.overflowed and framer.failed and framer.buffered == 0
    assert framer.too_long_message() == "line too long (max 8 bytes)"
    assert framer.feed(b"more\n") == []


@given(lines=st.lists(st.binary(max_size=20).filter(lambda b: b"\n" not in b), max_size=6),
       size=st.integers(1, 30))
def test_lines_fuzzed(lines: list[bytes], size: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    got = [m + t for m, t in feed_all(Lines(), chunked(data, size))]
    assert b"".join(got) == data


def test_max_size_the_smaller_wins() -> None:
    assert Lines(max_size=10).new(100).limit == 10
    assert Lines(max_size=100).new(10).limit == 10
    assert Lines().new(None).limit == 1 << 20
    assert Netstrings(5).new().limit == 5


# -- Netstrings --------------------------------------------------------------


def test_netstring_encoding() -> None:
    assert Netstrings().encode(b"hello") == b"5:hello,"
    assert Netstrings().encode(b"") == b"0:,"


@pytest.mark.parametrize("bad", [b":,", b"x:", b"01:a,", b"-1:a,", b"3:abc;", b" 3:abc,",
                                 b"3abc,"])
def test_malformed_netstrings(bad: bytes) -> None:
    for size in (1, len(bad)):
        framer = Netstrings()
        assert feed_all(framer, [b"2:ok,", *chunked(bad, size)]) == [(b"ok", b"")]
        assert framer.malformed and not framer.overflowed, bad
        assert framer.malformed_message() == "malformed netstring"


def test_netstring_too_long_is_refused_at_its_header() -> None:
    framer = Netstrings().new(10)
    assert framer.feed(b"11:") == [] and framer.overflowed and framer.buffered == 0
    framer = Netstrings().new(10)
    assert framer.feed(b"99") == [] and framer.overflowed  # no colon needed to know
    framer = Netstrings().new(10)
    assert framer.feed(b"10:0123456789,") == [b"0123456789"] and not framer.failed


def test_netstring_byte_by_byte_costs_linear_time() -> None:
    framer = Netstrings()
    payload = b"x" * 200_000
    data = Netstrings().encode(payload)
    got = [m for i in range(0, len(data), 1) for m in framer.feed(data[i:i + 1])]
    assert got == [payload]


def test_partial_netstring_at_eof_is_dropped() -> None:
    framer = Netstrings()
    framer.feed(b"5:he")
    assert framer.feed_eof() is None


# -- Int32Prefixed -----------------------------------------------------------


def test_int32_encoding_and_limit() -> None:
    assert Int32Prefixed().encode(b"abc") == b"\x00\x00\x00\x03abc"
    framer = Int32Prefixed().new(4)
    assert framer.feed(struct.pack(">I", 4) + b"abcd" + struct.pack(">I", 5)) == [b"abcd"]
    assert framer.overflowed and framer.buffered == 0
    assert framer.too_long_message() == "message too long (max 4 bytes)"
    assert not framer.malformed
