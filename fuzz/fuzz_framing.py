"""Fuzz the line framer: any bytes, cut anywhere, any limit."""

from __future__ import annotations

from common import fuzz_main, instrumented

with instrumented():
    from tcpkit.framing import LineFramer, split_lines, split_terminator


def check(data: bytes) -> None:
    """First byte: the limit; second: the cut size; the rest is the stream."""
    if len(data) < 2:
        return
    max_line, size, stream = data[0] % 64 + 1, data[1] % 32 + 1, data[2:]
    framer = LineFramer(max_line)
    lines: list[bytes] = []
    for start in range(0, len(stream), size):
        lines += split_lines(framer.feed(stream[start : start + size]))
        assert framer.buffered <= max_line + 1, "unbounded buffer"
    last = framer.feed_eof()
    for line in lines:
        assert len(split_terminator(line)[0]) <= max_line, "over-long line passed"
    if last is not None:
        assert len(last) <= max_line
    if not framer.overflowed:
        rebuilt = b"".join(line + b"\n" for line in lines) + (last or b"")
        assert rebuilt == stream, "bytes lost or changed"


if __name__ == "__main__":
    fuzz_main(check)
