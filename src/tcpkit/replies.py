"""What a session's hook returned: a job to run, or replies framed for the wire.

A hook may return ``None``, ``bytes``/``str`` (one message), a list or tuple
of those, or work that finishes later (:class:`~tcpkit.service.Offload`,
:class:`~tcpkit.service.Blocking`, an awaitable).  The engine
(:mod:`tcpkit.session_connection`) asks :func:`job_kind` first, then
:func:`encoded`; anything neither accepts is a bug in the hook, answered with
one ``internal error``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from tcpkit.connection import JobKind
from tcpkit.service import Blocking, Offload

Encode = Callable[[bytes, bytes], bytes]  # a framer's encode(message, terminator)


def job_kind(reply: object) -> JobKind | None:
    """The kind of job ``reply`` is, or None if it is not work for later."""
    if isinstance(reply, Offload):
        return "offload"
    if isinstance(reply, Blocking):
        return "blocking"
    if inspect.isawaitable(reply):
        return "awaitable"
    return None


def encoded(reply: object, terminator: bytes, encode: Encode) -> bytes | None:
    """``reply`` framed for the wire, or None if it is not a reply."""
    if reply is None:
        return b""
    single = as_bytes(reply)
    if single is not None:
        return encode(single, terminator)
    if not isinstance(reply, list | tuple):
        return None
    parts = []
    for item in reply:
        data = as_bytes(item)
        if data is None:
            return None
        parts.append(encode(data, terminator))
    return b"".join(parts)


def as_bytes(item: object) -> bytes | None:
    """One message as bytes (str as UTF-8), or None if it is not one."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8", "surrogateescape")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    return None


__all__ = ["as_bytes", "encoded", "job_kind"]
