"""Line framing without sockets: whole, byte by byte, every chunk size, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpkit.framing import LineFramer, split_lines, split_terminator


def frame(chunks: list[bytes], max_line: int = 1 << 20) -> tuple[list[bytes], bytes | None, bool]:
    """Feed chunks; return (complete lines, final partial line, overflowed)."""
    framer = LineFramer(max_line)
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(split_lines(framer.feed(chunk)))
    return lines, framer.feed_eof(), framer.overflowed


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


STREAM = b"one\ntwo\r\n\nthree\r\r\nfour"


@pytest.mark.parametrize("size", range(1, len(STREAM) + 1))
def test_every_chunk_size_gives_the_same_lines(size: int) -> None:
    assert frame(chunked(STREAM, size)) == (
        [b"one", b"two\r", b"", b"three\r\r"], b"four", False)


def test_terminators_are_split_off() -> None:
    assert split_terminator(b"two\r") == (b"two", b"\r\n")
    assert split_terminator(b"two") == (b"two", b"\n")
    assert split_terminator(b"a\rb") == (b"a\rb", b"\n")


def test_no_final_partial_line() -> None:
    assert frame([b"a\nb\n"]) == ([b"a", b"b"], None, False)


def test_line_at_the_limit_passes_and_one_byte_more_fails() -> None:
    assert frame([b"x" * 8 + b"\n"], max_line=8) == ([b"x" * 8], None, False)
    assert frame([b"x" * 8 + b"\r\n"], max_line=8) == ([b"x" * 8 + b"\r"], None, False)
    assert frame([b"x" * 9 + b"\n"], max_line=8)[2] is True


def test_over_long_line_reported_before_its_end_arrives() -> None:
    framer = LineFramer(max_line=10)
    assert framer.feed(b"x" * 11) == b""
    assert not framer.overflowed  # 11 bytes may still be 10 + CR
    framer.feed(b"y")
    assert framer.overflowed
    assert framer.buffered == 0  # nothing of the bad line is kept


def test_lines_before_an_over_long_one_are_delivered() -> None:
    lines, partial, overflowed = frame([b"ok\nfine\n" + b"x" * 50 + b"\nlost\n"], max_line=10)
    assert (lines, partial, overflowed) == ([b"ok", b"fine"], None, True)


def test_everything_after_overflow_is_ignored() -> None:
    framer = LineFramer(max_line=4)
    framer.feed(b"toolong\n")
    assert framer.feed(b"ok\n") == b""
    assert framer.feed_eof() is None


def test_trickled_long_line_is_linear() -> None:
    """A 200 KB line sent a byte at a time must not be re-searched each time."""
    framer = LineFramer()
    for _ in range(200_000):
        assert framer.feed(b"a") == b""
    assert framer.feed(b"\n") == b"a" * 200_000 + b"\n"


def test_memory_bounded_by_max_line() -> None:
    framer = LineFramer(max_line=1000)
    for _ in range(100):
        framer.feed(b"z" * 100)
        assert framer.buffered <= 1001
    assert framer.overflowed


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineFramer(0)


@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_stream_cut_anywhere_round_trips(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    lines, partial, overflowed = frame(pieces)
    assert not overflowed
    rebuilt = b"".join(line + b"\n" for line in lines) + (partial or b"")
    assert rebuilt == data
    assert all(b"\n" not in line for line in lines)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_fuzz_only_whole_lines_within_the_limit_escape(data: bytes, max_line: int) -> None:
    """Whatever arrives, the framer returns lines within the limit or flags overflow."""
    for size in (1, 7, len(data) or 1):
        lines, partial, overflowed = frame(chunked(data, size), max_line)
        for line in lines:
            content, _ = split_terminator(line)
            assert len(content) <= max_line
        if not overflowed:
            rebuilt = b"".join(line + b"\n" for line in lines) + (partial or b"")
            assert rebuilt == data


# A CR ending the content would belong to the terminator (SPEC §3): not content.
LINE_CONTENT = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b".").rstrip(b"\r"))


@given(st.lists(st.tuples(LINE_CONTENT, st.sampled_from([b"\n", b"\r\n"])), max_size=12),
       st.lists(st.integers(min_value=0, max_value=200), max_size=12),
       st.integers(min_value=1, max_value=12))
def test_structured_stream_cut_anywhere_splits_at_the_limit(
        lines: list[tuple[bytes, bytes]], cuts: list[int], max_line: int) -> None:
    """Lines with LF or CRLF, near the limit, cut anywhere: each line within the limit
    comes out with its own terminator, and framing stops exactly at the first one over."""
    data = b"".join(content + end for content, end in lines)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    got, partial, overflowed = frame(pieces, max_line)
    fits = []
    for content, end in lines:
        if len(content) > max_line:
            break
        fits.append((content, end))
    assert [split_terminator(line) for line in got] == fits
    assert overflowed == (len(fits) < len(lines))
    assert partial is None
