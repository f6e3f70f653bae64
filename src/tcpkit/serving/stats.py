"""Counters a server keeps, and the one-line summary it logs when it stops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Totals for one server process (all its listeners)."""

    started: float = field(default_factory=time.monotonic)
    connections: int = 0
    open: int = 0
    busy: int = 0  # refused: --max-connections reached
    lines: int = 0
    errors: int = 0
    idle_closed: int = 0

    def add(self, other: Stats) -> None:
        """Count ``other``'s totals too (a child's or a worker's report)."""
        self.connections += other.connections
        self.open += other.open
        self.busy += other.busy
        self.lines += other.lines
        self.errors += other.errors
        self.idle_closed += other.idle_closed

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"stopped after {elapsed:.1f} s: {self.connections} connections, "
            f"{self.lines} lines, {self.errors} errors, {self.busy} refused busy, "
            f"{self.idle_closed} closed idle"
        )
