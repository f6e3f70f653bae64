"""Sans-IO line framing: bytes in, blocks of complete lines out.

A line ends at LF; a CR just before the LF belongs to the terminator (see
:func:`split_terminator`).  The framer never touches a socket: the serving layer
feeds it whatever ``recv`` returned and gets back the bytes that form complete
lines, ready for a service.

Two properties matter for a server that faces the open Internet:

* **Bounded memory.**  A line longer than ``max_line`` bytes (terminator not
  counted) is a protocol error, reported as soon as the limit is passed rather
  than when the line finally ends, so a client can never make the server buffer
  more than about ``max_line`` bytes of an unfinished line.
* **Linear cost.**  A long line that trickles in a byte at a time must cost
  O(n), not O(n²).  Like h11's receive buffer, the framer never searches the
  same bytes twice: the unfinished tail is kept as a list of pieces (each
  searched once, when it arrived) and joined only when its LF turns up.

Complete lines are handed out as one block (``b"a\\nb\\n"``) rather than a list,
because the fastest services answer a whole block with a few C-level calls; see
:func:`split_lines` for the per-line view.
"""

from __future__ import annotations

LF = b"\n"
CRLF = b"\r\n"


class LineFramer:
    """Cut a byte stream into complete lines, enforcing a hard length limit.

    ``feed`` returns a block of zero or more complete lines (each ending in LF).
    Once a line breaks the limit, ``feed`` returns the complete lines that came
    before it and sets :attr:`overflowed`; from then on everything is discarded,
    because the stream can no longer be framed reliably.
    """

    __slots__ = ("_partial_len", "_parts", "max_line", "overflowed")

    def __init__(self, max_line: int = 1 << 20) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self.overflowed = False
        # The unfinished line, in arrival order; None (no list at all) while
        # there is none, which is almost always: idle connections cost less.
        self._parts: list[bytes] | None = None
        self._partial_len = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line."""
        return self._partial_len

    def feed(self, data: bytes) -> bytes:
        """Take newly received bytes; return the complete lines they finish."""
        # The common case first, in a handful of cheap operations: a chunk of
        # whole lines, nothing buffered, too short to hold an over-long line.
        if (data and data[-1] == 0x0A and not self._parts and not self.overflowed
                and len(data) <= self.max_line + 1):
            return data
        if self.overflowed or not data:
            return b""
        cut = data.rfind(LF) + 1
        if cut == 0:
            self._keep(data)
            return b""
        if cut == len(data):
            block, rest = data, b""
        else:
            block, rest = data[:cut], data[cut:]
        if self._parts:
            self._parts.append(block)
            block = b"".join(self._parts)
            self._parts = None
            self._partial_len = 0
        # A block no longer than max_line + LF cannot hold an over-long line, so
        # it needs no per-line check (the common case).
        if len(block) > self.max_line + 1:
            block = self._check_lengths(block)
            if self.overflowed:
                return block
        if rest:
            self._keep(rest)
        return block

    def feed_eof(self) -> bytes | None:
        """The peer finished sending: return its last, unterminated line, if any.

        The line comes back without any terminator; the caller answers it as if
        it had ended in LF.  One longer than ``max_line`` sets :attr:`overflowed`
        instead.
        """
        if self.overflowed or not self._parts:
            return None
        if self._partial_len > self.max_line:  # no LF came, so no CR is a terminator
            self._overflow()
            return None
        line = b"".join(self._parts)
        self._parts = None
        self._partial_len = 0
        return line

    def _keep(self, piece: bytes) -> None:
        if self._parts is None:
            self._parts = []
        self._parts.append(piece)
        self._partial_len += len(piece)
        # +1: a trailing CR may still turn out to be part of a CRLF terminator.
        if self._partial_len > self.max_line + 1:
            self._overflow()

    def _check_lengths(self, block: bytes) -> bytes:
        """Return the lines of ``block`` before the first over-long one."""
        start = 0
        limit = self.max_line
        while start < len(block):
            end = block.index(LF, start)
            length = end - start
            if length > limit and not (length == limit + 1 and block[end - 1] == 0x0D):
                self._overflow()
                return block[:start]
            start = end + 1
        return block

    def _overflow(self) -> None:
        self.overflowed = True
        self._parts = None
        self._partial_len = 0


def split_lines(block: bytes) -> list[bytes]:
    """Split a block of complete lines into lines without their LF.

    A CR before the LF is kept; :func:`split_terminator` separates it.
    """
    lines = block.split(LF)
    lines.pop()  # the empty piece after the block's final LF
    return lines


def split_terminator(line: bytes) -> tuple[bytes, bytes]:
    """Split a line (LF already removed) into its content and its terminator."""
    if line.endswith(b"\r"):
        return line[:-1], CRLF
    return line, LF
