"""Counters a server keeps, and the one-line summary it logs when it stops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields


@dataclass
class Stats:
    """Totals for one server process (all its listeners)."""

    started: float = field(default_factory=time.monotonic)
    connections: int = 0
    open: int = 0
    busy: int = 0  # refused: --max-connections reached
    limited: int = 0  # refused: --max-per-ip or --rate-per-ip
    denied: int = 0  # refused: access lists, or a PROXY header missing/bad/untrusted
    lines: int = 0
    errors: int = 0
    idle_closed: int = 0

    def counts(self) -> tuple[int, ...]:
        """Every counter, in the order of :data:`COUNTERS` (for reports over a pipe)."""
        return tuple(getattr(self, name) for name in COUNTERS)

    @classmethod
    def from_counts(cls, counts: tuple[int, ...]) -> Stats:
        return cls(0.0, **dict(zip(COUNTERS, counts, strict=True)))

    def add(self, other: Stats) -> None:
        """Count ``other``'s totals too (a child's or a worker's report)."""
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"stopped after {elapsed:.1f} s: {self.connections} connections, "
            f"{self.lines} lines, {self.errors} errors, {self.busy} refused busy, "
            + (f"{self.limited} refused by per-client limits, " if self.limited else "")
            + (f"{self.denied} denied (access lists, PROXY headers), " if self.denied else "")
            + f"{self.idle_closed} closed idle"
        )


COUNTERS = tuple(f.name for f in fields(Stats) if f.name != "started")
