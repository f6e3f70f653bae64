"""The reverse service (port 7800): each line comes back reversed.

Reversal is by user-perceived character — extended grapheme clusters of Unicode
UAX #29 — so ``añb`` written with a combining tilde comes back as ``bña`` and
emoji with skin-tone modifiers or flags stay whole.  Segmentation comes from the
``regex`` module's ``\\X``, which implements UAX #29 in C and follows each new
Unicode release.

Bytes that are not valid UTF-8 are decoded with ``surrogateescape``: each bad
byte becomes a lone surrogate, which UAX #29 treats as a cluster of its own, so
it moves as a single unit and is encoded back to the very same byte.  No line
is ever refused for its encoding.

ASCII needs no segmentation (the only multi-character ASCII cluster is CR LF,
and a line's content never contains LF), so ASCII lines — and whole blocks of
them — are reversed byte-wise with C-level slicing.
"""

from __future__ import annotations

import regex

from tcpkit.service import Service

_CLUSTER = regex.compile(r"\X")


def reverse_line(line: bytes) -> bytes:
    """Reverse one line's content by grapheme cluster, keeping invalid bytes."""
    if line.isascii():
        return line[::-1]
    text = line.decode("utf-8", "surrogateescape")
    clusters = _CLUSTER.findall(text)
    clusters.reverse()
    return "".join(clusters).encode("utf-8", "surrogateescape")


def reverse_block(block: bytes) -> bytes | None:
    """Reverse every line of a block of LF-terminated lines at C speed.

    Reversing the whole block turns ``"ab\\ncd\\n"`` into ``"\\ndc\\nba"``:
    every line reversed, but in reverse order and with the LFs in front.
    Splitting that, reversing the list and joining with LF restores the order.
    Only valid for ASCII without CR (CRLF lines keep their terminator as is).
    """
    # ``0x0D in block`` is a memchr; ``b"\r" in block`` takes the general
    # substring path and costs five times as much per request.
    if not block.isascii() or 0x0D in block:
        return None
    pieces = block[::-1].split(b"\n")
    pieces.reverse()  # pieces[-1] is the empty piece before the first LF
    return b"\n".join(pieces)


SERVICE = Service(
    name="reverse",
    port=7800,
    description="replies with each line reversed (by Unicode grapheme cluster)",
    answer=reverse_line,
    answer_block=reverse_block,
)
