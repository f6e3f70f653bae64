"""Numbers that keep a factor worker busy, and a CPU probe to see it stop."""

from __future__ import annotations

import time
from functools import cache

import flint

from conftest import process_cpu_seconds


def next_prime(n: int) -> int:
    p = flint.fmpz(n)
    while not p.is_prime():
        p += 1
    return int(p)


@cache
def semiprime(digits: int) -> int:
    """A product of two primes of about ``digits / 2`` digits each.

    FLINT needs ~0.25 s for 48 digits, ~2 s for 58, far longer for 76.
    """
    half = digits // 2
    return next_prime(10 ** (half - 1)) * next_prime(3 * 10 ** (digits - half - 1))


def cpu_rate(pid: int, window: float = 0.5) -> float:
    """CPU seconds per second used by ``pid`` and its descendants over ``window``."""
    before = process_cpu_seconds(pid)
    time.sleep(window)
    return (process_cpu_seconds(pid) - before) / window


def wait_for_cpu(pid: int, busy: bool, timeout: float = 15.0) -> bool:
    """Poll until the process tree is busy (>= 0.3 CPU) or idle (< 0.1 CPU)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rate = cpu_rate(pid)
        if (rate >= 0.3) if busy else (rate < 0.1):
            return True
    return False
