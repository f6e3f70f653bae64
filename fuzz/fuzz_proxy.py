"""Fuzz the PROXY protocol parser: any bytes, cut anywhere, are a header, a wait or an error.

The first byte picks where the rest is cut in two, so one input also checks
that chunking changes nothing: the reader fed two pieces answers what the
parser answers for the whole.
"""

from __future__ import annotations

import ipaddress

from common import fuzz_main, instrumented

with instrumented():
    from tcpkit.serving.guards.proxy import (
        HeaderReader,
        ProxyHeader,
        ProxyHeaderError,
        parse_header,
    )

MAX_SIZE = 512  # small, so the fuzzer reaches the cap


def check(data: bytes) -> None:
    if not data:
        return
    cut, data = data[0] % (len(data)), data[1:]
    whole = outcome(lambda: parse_header(data, MAX_SIZE))
    reader = HeaderReader(MAX_SIZE)
    pieces = outcome(lambda: reader.feed(data[:cut]))
    after = data[cut:]  # what the reader has not seen yet
    if pieces is None:
        pieces, after = outcome(lambda: reader.feed(data[cut:])), b""
    assert pieces == whole, (pieces, whole)
    assert reader.buffered <= MAX_SIZE
    if isinstance(whole, ProxyHeader):
        assert whole.length <= min(len(data), MAX_SIZE)
        assert reader.rest + after == data[whole.length:]
        assert parse_header(data[: whole.length], MAX_SIZE) == whole
        for address in (whole.source, whole.destination):
            if address is not None:
                ipaddress.ip_address(address[0])  # always a real address
                assert 0 <= address[1] <= 65535
        assert (whole.source is None) == (whole.destination is None)


def outcome(parse: object) -> ProxyHeader | str | None:
    """What a parse gave: the header, None (wait), or "refused"."""
    assert callable(parse)
    try:
        return parse()  # type: ignore[no-any-return]
    except ProxyHeaderError as exc:
        assert str(exc), "empty error message"
        return "refused"


if __name__ == "__main__":
    fuzz_main(check)
