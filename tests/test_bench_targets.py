"""bench/run.py's targets table says "met" exactly when issue 13's target is met.

The table is built from a run's medians; these figures are made up so that
each target sits just on one side of its line.  Nothing is timed here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def record(server: str, cell: str, rps: float, cpu_us: float | None = None,
           rss_kb: int = 1024) -> dict[str, Any]:
    entry: dict[str, Any] = {"server": server, "cell": cell, "rps": rps, "p99_us": 100,
                             "rss_kb": rss_kb, "errors": 0, "connect_errors": 0}
    if cpu_us is not None:
        entry["cpu_us_per_req"] = cpu_us
    return entry


def table(run: ModuleType, records: list[dict[str, Any]]) -> dict[str, list[str]]:
    plan = run.Plan(servers=[], cells=[], repeat=1)
    ctx = run.Context(shared=Path(), build=Path(), python="", tcpkit=[], seconds=1, idle=1,
                      hold=10)
    rows = [line for line in run.targets(run.summarize(records), plan, ctx)
            if line.startswith("| tcpkit")]
    return {row.split(" | ")[0].lstrip("| "): [c.strip() for c in row.split("|")[2:-1]]
            for row in rows}


def test_async_needs_both_throughput_and_cpu(run: ModuleType) -> None:
    rows = table(run, [
        record("c_epoll", "rr-c100", 1000, cpu_us=10.0),
        record("tcpkit-async", "rr-c100", 900, cpu_us=11.6),  # 0.90: met; CPU 1.16: not
        record("c_epoll", "stream-w64", 1000, cpu_us=1.0),
        record("tcpkit-async", "stream-w64", 899, cpu_us=1.15),  # 0.899: not; CPU 1.15: met
    ])
    rr = next(v for k, v in rows.items() if "rr-c100" in k)
    stream = next(v for k, v in rows.items() if "stream-w64" in k)
    assert rr == ["0.90", "1.16", "yes", "**no**"]
    assert stream == ["0.90", "1.15", "**no**", "yes"]


def test_peers_and_fork_memory(run: ModuleType) -> None:
    rows = table(run, [
        record("socketserver-thread", "conn-c10", 100, cpu_us=50.0),
        record("tcpkit-thread", "conn-c10", 101, cpu_us=49.0),
        record("perl-fork", "rr-c1000", 100, rss_kb=1000 * 1024),
        record("tcpkit-fork", "rr-c1000", 99, rss_kb=999 * 1024),
    ])
    thread = next(v for k, v in rows.items() if k.startswith("tcpkit-thread conn-c10"))
    fork = next(v for k, v in rows.items() if k.startswith("tcpkit-fork rr-c1000 ≥"))
    memory = next(v for k, v in rows.items() if "peak RSS" in k)
    assert thread == ["1.01", "0.98", "yes", "yes"]
    assert fork[2] == "**no**"  # 0.99 of Perl's requests/s
    assert memory[0] == "999 vs 1000 MB" and memory[2] == "yes"
