"""Smoke test of the benchmark command (SPEC §8): it builds, runs, and reports.

Runs ``bench/run.py`` in its quickest form — C epoll and tcpkit's async mode,
one cell, one second — and checks that the raw JSON lines, the markdown table
and the plot come out.  It asserts what was measured (every reply checked by
the load generator, nothing failed), never how fast: speed is the benchmark's
business, not the test suite's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The shared bench directory (loadgen.c, the anchor servers) lives beside the
# repository, not in it; TCPKIT_BENCH_SHARED points anywhere else.
SHARED = Path(os.environ.get("TCPKIT_BENCH_SHARED") or REPO.parent / "shared" / "bench")
HOW_TO_RUN = (f"no loadgen.c in {SHARED}: put the shared bench directory (loadgen.c, "
              "c_epoll_reverse.c, anchors/) there, or run "
              "TCPKIT_BENCH_SHARED=/path/to/bench python -m pytest tests/test_bench.py")

pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed"),
    pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset not installed"),
    pytest.mark.skipif(not (SHARED / "loadgen.c").exists(), reason=HOW_TO_RUN),
]


def test_quickest_run_writes_raw_table_and_plot(tmp_path: Path) -> None:
    markdown, raw, plot = tmp_path / "BENCH.md", tmp_path / "raw.jsonl", tmp_path / "plot.png"
    markdown.write_text("# Benchmarks\n\nKept by hand.\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--seconds", "1",
         "--servers", "c_epoll,tcpkit-async", "--cells", "rr-c100", "--shared", str(SHARED),
         "--build", str(tmp_path / "build"), "--markdown", str(markdown),
         "--raw", str(raw), "--plot", str(plot)],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    entries = [json.loads(line) for line in raw.read_text().splitlines()]
    assert "meta" in entries[0] and "meta" in entries[-1]  # what --report rebuilds from
    records = [entry for entry in entries if "meta" not in entry]
    assert {(r["server"], r["cell"]) for r in records} == {
        ("c_epoll", "rr-c100"), ("tcpkit-async", "rr-c100")}
    for record in records:
        assert "failed" not in record, record
        assert record["requests"] > 0 and record["errors"] == 0, record
        assert record["rss_kb"] > 0, record
    assert "tcpkit-async" in done.stderr  # progress went to stderr

    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\nKept by hand.\n")  # hand-written part kept
    row = next(line for line in text.splitlines() if line.startswith("| tcpkit-async |"))
    assert "(" in row and "failed" not in row  # a figure with its ratio to C epoll
    assert "| c_epoll | " in text and "(1.00)" in text
    if plot.exists():  # matplotlib is in the bench extra, not the test extra
        assert plot.read_bytes().startswith(b"\x89PNG")

    # --report rebuilds the same table from the raw file, measuring nothing.
    again = tmp_path / "AGAIN.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--report", str(raw),
         "--markdown", str(again), "--plot", str(tmp_path / "again.png")],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert row in again.read_text()


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl not installed")
def test_forking_servers_cpu_and_memory_count_every_child(tmp_path: Path) -> None:
    """A forking server's figures cover its children: CPU time by perf stat (Perl's
    children are reaped by nobody, so /proc never adds theirs to the parent), and
    memory as the sum of Pss, a page shared by the whole tree counted once."""
    raw = tmp_path / "raw.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--seconds", "1",
         "--servers", "tcpkit-fork,perl-fork", "--cells", "rr-c100", "--shared", str(SHARED),
         "--build", str(tmp_path / "build"), "--markdown", str(tmp_path / "BENCH.md"),
         "--raw", str(raw), "--plot", str(tmp_path / "plot.png")],
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    records = {entry["server"]: entry for entry in map(json.loads, raw.read_text().splitlines())
               if "meta" not in entry}
    assert set(records) == {"tcpkit-fork", "perl-fork"}
    for record in records.values():
        assert "failed" not in record and record["errors"] == 0, record
        assert record["rss_kb"] > 0, record
        if "cpu_us_per_req" in record:  # perf present and permitted
            # 100 children forked and exited: far above what the parent alone spends.
            assert record["cpu_us_per_req"] > 0 and record["cpu_s"] > 0.05, record
    if shutil.which("perf") is not None and "cpu_us_per_req" not in records["perl-fork"]:
        pytest.skip("perf stat is not permitted here")

