"""Fuzz the endpoint parser: any text is an Endpoint or an EndpointError."""

from __future__ import annotations

from common import fuzz_main, instrumented

with instrumented():
    from tcpkit.endpoints import EndpointError, parse_endpoint


def check(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for default in (None, 7800):
        try:
            endpoint = parse_endpoint(text, default)
        except EndpointError as exc:
            assert str(exc), "empty error message"
            continue
        if endpoint.path is not None:
            assert endpoint.path and endpoint.host is None, endpoint
            continue
        assert 0 <= endpoint.port <= 65535, f"port out of range: {endpoint}"
        if plain(endpoint.host):  # what it prints, it parses back
            assert parse_endpoint(str(endpoint)) == endpoint, endpoint


def plain(host: str | None) -> bool:
    """A host that survives printing: parse_endpoint strips spaces, reads brackets,
    and takes ``unix:...`` for a socket path."""
    if not host or host == "unix" or not host.isprintable():
        return False
    return not any(c.isspace() or c in "[]" for c in host)


if __name__ == "__main__":
    fuzz_main(check)
