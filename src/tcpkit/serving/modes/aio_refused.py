"""A refused client of the async mode, after its ``error:`` line (busy, limits).

Its own protocol object, so the refused connection costs the serving client
class nothing: the transport is handed over to a :class:`Refused` that only
drops input until the client closes or LINGER passes.
"""

from __future__ import annotations

import asyncio

from tcpkit.serving.guards.gate import LINGER, Gate


class Refused(asyncio.Protocol):
    """A refused client after its ``error:`` line: read and drop what it sends.

    Closing a socket with unread input makes the kernel reset the connection,
    and the reset can overtake the error line.  So the line is followed by a
    FIN, and the connection lingers (at most LINGER seconds, as many at once
    as the gate allows) until the client closes its side.
    """

    def __init__(self, gate: Gate, transport: asyncio.Transport) -> None:
        self.gate = gate
        self.transport = transport
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def close(cls, gate: Gate, loop: asyncio.AbstractEventLoop,
              transport: asyncio.Transport) -> None:
        """Half-close after the error line and linger, if the gate has room; else close."""
        if not transport.can_write_eof() or not gate.linger():
            transport.close()
            return
        refused = cls(gate, transport)
        transport.set_protocol(refused)
        transport.write_eof()
        refused.timer = loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.gate.unlinger()
