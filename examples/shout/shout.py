"""A complete tcpkit service: each line comes back in capitals."""

from tcpkit import RequestError, Service


def shout(line: bytes) -> bytes:
    if not line.strip():
        raise RequestError("nothing to shout")
    return line.upper()


SERVICE = Service("shout", 7802, "replies with each line in capitals", shout)
