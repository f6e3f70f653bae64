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
    limited: int = 0  # refused: --max-per-ip or --rate-per-ip
    lines: int = 0
    errors: int = 0
    idle_closed: int = 0

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"stopped after {elapsed:.1f} s: {self.connections} connections, "
            f"{self.lines} lines, {self.errors} errors, {self.busy} refused busy, "
            + (f"{self.limited} refused by per-client limits, " if self.limited else "")
            + f"{self.idle_closed} closed idle"
        )
