"""A fresh clone has no shared bench directory: test_bench's skip says how to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_bench_skip_reason_says_how_to_run_it(tmp_path: Path) -> None:
    env = {**os.environ, "TCPKIT_BENCH_SHARED": str(tmp_path)}  # no loadgen.c there
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(HERE / "test_bench.py")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped, done.stdout
    for line in skipped:  # one line per skipped test (location), each saying how to run it
        assert f"no loadgen.c in {tmp_path}" in line
        assert "TCPKIT_BENCH_SHARED=/path/to/bench python -m pytest tests/test_bench.py" in line
