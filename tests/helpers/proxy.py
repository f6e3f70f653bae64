"""PROXY protocol senders: the bytes HAProxy's send-proxy (v1) and send-proxy-v2 write."""

from __future__ import annotations

import ipaddress
import struct

PROXY_V2_SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")


def proxy_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY v1 line for a TCP connection from ``source`` to ``destination``."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} "
            f"{source[1]} {destination[1]}\r\n").encode()


def proxy_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None = None,
             tlvs: list[tuple[int, bytes]] | None = None, command: int = 1,
             family: int | None = None) -> bytes:
    """A PROXY v2 header; ``source`` None writes a LOCAL (health check) header."""
    block = b""
    if source is None:
        command, family = 0, family or 0x00
    else:
        src = ipaddress.ip_address(source[0])
        destination = destination or ("::1" if src.version == 6 else "127.0.0.1", 7800)
        dst = ipaddress.ip_address(destination[0])
        family = family if family is not None else (0x21 if src.version == 6 else 0x11)
        block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    block += b"".join(bytes([kind]) + struct.pack("!H", len(value)) + value
                      for kind, value in tlvs or [])
    return (PROXY_V2_SIGNATURE + bytes([0x20 | command, family])
            + struct.pack("!H", len(block)) + block)
