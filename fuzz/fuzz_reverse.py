"""Fuzz the reverse service: any line, valid UTF-8 or not."""

from __future__ import annotations

from collections import Counter

from common import fuzz_main, instrumented

with instrumented():
    from tcpkit.services.reverse import reverse_block, reverse_line


def check(data: bytes) -> None:
    line = data.replace(b"\n", b"")
    reply = reverse_line(line)
    assert Counter(reply) == Counter(line), "bytes lost or invented"
    block = data if data.endswith(b"\n") else data + b"\n"
    fast = reverse_block(block)
    if fast is not None:
        slow = b"".join(reverse_line(part) + b"\n" for part in block.split(b"\n")[:-1])
        assert fast == slow, "block fast path disagrees"


if __name__ == "__main__":
    fuzz_main(check)
