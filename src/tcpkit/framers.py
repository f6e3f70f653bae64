"""Sans-IO message framers for session services: bytes in, messages out.

Like Twisted's LineReceiver, NetstringReceiver and Int32StringReceiver, but
without the transport: a framer is fed whatever ``recv`` returned and hands
back the complete messages; :meth:`Framer.encode` frames a reply.

* :class:`Lines` — LF-terminated lines; a CR before the LF belongs to the
  terminator and each reply ends with its request's terminator (the reverse
  and factor behaviour).  It wraps :class:`tcpkit.framing.LineFramer`, so there
  is one line splitter in tcpkit, linear-cost and bounded.
* :class:`Netstrings` — ``5:hello,`` (D. J. Bernstein's netstrings).
* :class:`Int32Prefixed` — a 4-byte big-endian length, then the payload.

Every framer enforces ``max_size`` (a message's payload length, terminator or
header not counted) and reports a break as soon as it is certain: a netstring
whose announced length is too big is refused at its header, before any payload
is buffered.  So memory per connection stays about ``max_size`` whatever a
client sends.  After an over-long (:attr:`Framer.overflowed`) or malformed
(:attr:`Framer.malformed`) message the stream cannot be framed reliably any
more: the framer discards all further input and the connection closes after
the replies so far.

A :class:`Service` holds a framer as a *template*; each connection gets its
own copy from :meth:`Framer.new`, with the server's ``--max-line`` applied
when the template does not set ``max_size``.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod

from tcpkit.framing import LF, LineFramer, split_lines, split_terminator

DEFAULT_MAX_SIZE = 1 << 20  # = the --max-line default

# What feed_framed returns: a message, and the terminator its reply ends with
# (b"" for framers whose replies do not depend on the request).
Framed = tuple[bytes, bytes]


class Framer(ABC):
    """The interface every framer has; see the module docstring."""

    max_size: int | None
    overflowed: bool
    malformed: bool

    @abstractmethod
    def new(self, max_size: int | None = None) -> Framer:
        """A fresh framer for one connection; ``max_size`` applies unless this one sets its own
        (then the smaller wins)."""

    @abstractmethod
    def feed_framed(self, data: bytes) -> list[Framed]:
        """Take received bytes; return the complete messages with their reply terminators."""

    def feed(self, data: bytes) -> list[bytes]:
        """Take received bytes; return the complete messages."""
        return [message for message, _ in self.feed_framed(data)]

    def feed_eof(self) -> bytes | None:
        """The peer finished sending: its last unterminated message, if the framing has one."""
        return None

    @abstractmethod
    def encode(self, message: bytes, terminator: bytes | None = None) -> bytes:
        """``message`` framed for the wire (``terminator``: the request's, for Lines)."""

    @property
    @abstractmethod
    def buffered(self) -> int:
        """Bytes held for an unfinished message."""

    @property
    def failed(self) -> bool:
        """The stream broke the framing: discard the rest, close after the replies so far."""
        return self.overflowed or self.malformed

    @property
    def limit(self) -> int:
        """The largest message accepted."""
        return self.max_size or DEFAULT_MAX_SIZE

    def too_long_message(self) -> str:
        return f"message too long (max {self.limit} bytes)"

    def malformed_message(self) -> str:
        return "malformed message"


def _combined(own: int | None, server: int | None) -> int | None:
    if own is None or server is None:
        return own if server is None else server
    return min(own, server)


class Lines(Framer):
    """LF-terminated lines (CR LF too); ``newline`` ends lines that answer no request
    (``connected()`` and ``send()`` lines, the reply to a last line that had no LF).

    ``echo_terminator=False`` ends *every* line sent with ``newline``, whatever
    the request's terminator: protocols such as SMTP always answer CR LF, even
    to a client that sends bare LF."""

    __slots__ = ("_lines", "echo_terminator", "max_size", "newline")

    def __init__(self, max_size: int | None = None, newline: bytes = LF,
                 echo_terminator: bool = True) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError("max_size must be at least 1")
        if newline not in (b"\n", b"\r\n"):
            raise ValueError("newline must be LF or CR LF")
        self.max_size = max_size
        self.newline = newline
        self.echo_terminator = echo_terminator
        self._lines = LineFramer(self.limit)

    def new(self, max_size: int | None = None) -> Lines:
        return Lines(_combined(self.max_size, max_size), self.newline, self.echo_terminator)

    @property
    def overflowed(self) -> bool:  # type: ignore[override]
        return self._lines.overflowed

    @property
    def malformed(self) -> bool:  # type: ignore[override]
        return False  # any bytes are a line

    @property
    def buffered(self) -> int:
        return self._lines.buffered

    def feed_framed(self, data: bytes) -> list[Framed]:
        block = self._lines.feed(data)
        return [split_terminator(line) for line in split_lines(block)] if block else []

    def feed_eof(self) -> bytes | None:
        return self._lines.feed_eof()

    def encode(self, message: bytes, terminator: bytes | None = None) -> bytes:
        if terminator and self.echo_terminator:
            return message + terminator
        return message + self.newline

    def too_long_message(self) -> str:
        return f"line too long (max {self.limit} bytes)"


class _LengthPrefixed(Framer):
    """The loop Netstrings and Int32Prefixed share: a header that gives the payload's
    length (:meth:`_header`, each framer's own), the payload, then ``_TRAILER``."""

    __slots__ = ("_buf", "_length", "malformed", "max_size", "overflowed")
    _TRAILER = b""

    def __init__(self, max_size: int | None) -> None:
        self.max_size = max_size
        self.overflowed = False
        self.malformed = False
        self._buf = bytearray()
        self._length: int | None = None  # of the message being read, once its header is in

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed_framed(self, data: bytes) -> list[Framed]:
        if self.failed or not data:
            return []
        buf = self._buf
        buf += data
        out: list[Framed] = []
        header, trailer, after_payload = self._header, self._TRAILER, len(self._TRAILER)
        start = 0
        length = self._length  # of a message whose header came in an earlier feed
        while True:
            if length is None:
                found = header(start)
                if found is None:  # incomplete, or failed
                    break
                start, length = found
            end = start + length
            if len(buf) < end + after_payload:  # the payload or its trailer is still to come
                break
            if after_payload and buf[end:end + after_payload] != trailer:
                self._fail(malformed=True)
                return out
            out.append((bytes(buf[start:end]), b""))
            length = None
            start = end + after_payload
        self._length = length
        if start:
            del buf[:start]  # once per feed: each byte is moved O(1) times
        return out

    @abstractmethod
    def _header(self, start: int) -> tuple[int, int] | None:
        """Parse the header at ``start``: (the payload's offset, its length), or None
        (incomplete, or :meth:`_fail` called)."""

    def _fail(self, malformed: bool) -> None:
        self.malformed = malformed
        self.overflowed = not malformed
        self._buf = bytearray()
        self._length = None


class Netstrings(_LengthPrefixed):
    """``LENGTH:PAYLOAD,`` with LENGTH in decimal, no sign and no leading zero."""

    __slots__ = ("_digits",)
    _TRAILER = b","

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must not be negative")
        super().__init__(max_size)
        self._digits = len(str(self.limit))  # a longer header is over the limit for sure

    def new(self, max_size: int | None = None) -> Netstrings:
        return Netstrings(_combined(self.max_size, max_size))

    def _header(self, start: int) -> tuple[int, int] | None:
        buf = self._buf
        colon = buf.find(b":", start, start + self._digits + 1)
        head = bytes(buf[start:colon if colon >= 0 else start + self._digits + 1])
        if (head and not head.isdigit()) or (len(head) > 1 and head[0] == 0x30):
            self._fail(malformed=True)
            return None
        if colon < 0:
            if len(head) > self._digits or (head and int(head) > self.limit):
                self._fail(malformed=False)
            return None
        if not head:
            self._fail(malformed=True)
            return None
        length = int(head)
        if length > self.limit:
            self._fail(malformed=False)
            return None
        return colon + 1, length

    def encode(self, message: bytes, terminator: bytes | None = None) -> bytes:
        return b"%d:%s," % (len(message), message)

    def malformed_message(self) -> str:
        return "malformed netstring"


_LENGTH = struct.Struct(">I")


class Int32Prefixed(_LengthPrefixed):
    """A 4-byte big-endian unsigned length, then that many bytes of payload (every
    4 bytes are a valid length: never malformed, only over-long)."""

    __slots__ = ()

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and not 0 <= max_size < 1 << 32:
            raise ValueError("max_size must be between 0 and 2**32 - 1")
        super().__init__(max_size)

    def new(self, max_size: int | None = None) -> Int32Prefixed:
        return Int32Prefixed(_combined(self.max_size, max_size))

    def _header(self, start: int) -> tuple[int, int] | None:
        if len(self._buf) - start < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buf, start)
        if length > self.limit:
            self._fail(malformed=False)
            return None
        return start + _LENGTH.size, length

    def encode(self, message: bytes, terminator: bytes | None = None) -> bytes:
        return _LENGTH.pack(len(message)) + message


__all__ = ["DEFAULT_MAX_SIZE", "Framer", "Int32Prefixed", "Lines", "Netstrings"]
