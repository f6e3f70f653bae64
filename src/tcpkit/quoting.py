"""How a request's bytes are shown in a message: one way, everywhere.

An error reply quotes the bad request (``error: not an integer: "4\\u00e9"``)
and ``tcpkit factor`` prefixes each error with the number it sent; both must
show the same bytes the same way, and neither may put a raw control byte on
a terminal.  The rule, as in a Python bytes literal plus ``\\u`` for text:

* printable ASCII is itself, except ``\\`` and ``"``, which get a backslash;
* ``\\t``, ``\\n``, ``\\r``; any other ASCII control byte is ``\\xNN``;
* a character beyond ASCII is ``\\uNNNN`` (or ``\\UNNNNNNNN``);
* a byte that is not valid UTF-8 is ``\\xNN`` (only ever one byte, so
  ``\\xe9`` is the byte 0xE9 and ``\\u00e9`` the character é).

The result is ASCII, one line, and tells every input apart.
"""

from __future__ import annotations

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\", '"': '\\"'}


def escape(data: bytes) -> str:
    """``data`` shown by the rule above, without quotes."""
    shown = []
    for char in data.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if char in _SHORT:
            shown.append(_SHORT[char])
        elif 0x20 <= code < 0x7F:
            shown.append(char)
        elif code < 0x80 or 0xDC80 <= code <= 0xDCFF:  # a control, or an undecodable byte
            shown.append(f"\\x{code & 0xFF:02x}")
        elif code <= 0xFFFF:
            shown.append(f"\\u{code:04x}")
        else:
            shown.append(f"\\U{code:08x}")
    return "".join(shown)


def quote(data: bytes, limit: int) -> str:
    """``"escaped"``, at most ``limit`` bytes of ``data`` (``..."`` marks a cut)."""
    more = "..." if len(data) > limit else ""
    return f'"{escape(data[:limit])}{more}"'
