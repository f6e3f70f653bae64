"""Per-client admission: xinetd's ``per_source`` and ``cps``, sans-IO.

:class:`Admission` decides whether a new connection from a source address may
be served: at most ``max_per_ip`` open connections per address, and at most
``rate_per_ip`` new connections per second per address (a token bucket, so a
client may open a small burst at once, then the steady rate).  It owns no
socket and no clock — the serving mode passes ``now`` — so every mode (async,
thread, fork, iterative) uses the same rules, and they are tested without a
network.

Memory stays bounded whatever the clients do: an address is forgotten as soon
as it has no open connection and a full bucket again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from tcpkit.connection import ERROR
from tcpkit.framing import LF

SWEEP_EVERY = 1024  # admissions between sweeps of forgotten addresses
_RATE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*")


class Refusal(NamedTuple):
    """Why a connection is refused: a metrics ``kind`` and the client's message."""

    kind: str  # busy, per_ip, rate
    message: str

    @property
    def line(self) -> bytes:
        """The ``error:`` line the refused client reads before the close."""
        return ERROR + self.message.encode() + LF


BUSY = Refusal("busy", "server busy")
RATE = Refusal("rate", "connection rate exceeded")


def parse_rate(text: str) -> float:
    """Connections per second from ``10``, ``10/s`` or ``600/m``; ValueError if bad."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a rate: {text!r} (expected N/s or N/m)")
    value = float(match.group(1))
    if match.group(2) and match.group(2).startswith("m"):
        value /= 60.0
    if value <= 0:
        raise ValueError(f"rate must be above 0: {text!r}")
    return value


@dataclass
class _Source:
    open: int = 0
    tokens: float = 0.0
    stamp: float = 0.0


class Admission:
    """Open connections and connection rate per source address."""

    def __init__(self, max_per_ip: int | None = None, rate_per_ip: float | None = None) -> None:
        self.max_per_ip = max_per_ip
        self.rate = rate_per_ip
        # A bucket holds one second's worth of connections (at least one).
        self.burst = max(1.0, rate_per_ip or 0.0)
        self._sources: dict[str, _Source] = {}
        self._until_sweep = SWEEP_EVERY

    @property
    def enabled(self) -> bool:
        return self.max_per_ip is not None or self.rate is not None

    def admit(self, host: str, now: float) -> Refusal | None:
        """Count a new connection from ``host``, or say why it is refused.

        Every admitted connection must be :meth:`release`-d when it closes.
        """
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self.sweep(now)
        source = self._sources.get(host)
        if source is None:
            source = self._sources[host] = _Source(tokens=self.burst, stamp=now)
        if self.max_per_ip is not None and source.open >= self.max_per_ip:
            return Refusal("per_ip", f"too many connections from {host}")
        if self.rate is not None:
            source.tokens = min(self.burst, source.tokens + (now - source.stamp) * self.rate)
            source.stamp = now
            if source.tokens < 1.0:
                return RATE
            source.tokens -= 1.0
        source.open += 1
        return None

    def release(self, host: str) -> None:
        """A connection admitted from ``host`` has closed."""
        source = self._sources.get(host)
        if source is not None and source.open > 0:
            source.open -= 1

    def sweep(self, now: float) -> None:
        """Forget addresses with no open connection and a full bucket."""
        self._until_sweep = SWEEP_EVERY
        rate = self.rate or 0.0
        idle = [host for host, s in self._sources.items()
                if s.open == 0 and s.tokens + (now - s.stamp) * rate >= self.burst]
        for host in idle:
            del self._sources[host]

    def tracked(self) -> int:
        """Addresses currently remembered (bounded by open connections + recent ones)."""
        return len(self._sources)
