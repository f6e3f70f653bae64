"""Run the coverage-guided fuzzers (atheris/libFuzzer), one after another.

    python fuzz/run.py --minutes 10            # every harness, 10 minutes in all
    python fuzz/run.py --seconds 5 framing     # one harness, briefly (what CI does)

Each harness starts from its checked-in seed corpus (``fuzz/corpus/NAME``, read
only) and keeps what it learns in ``fuzz/.work/NAME``.  A crash is written to
``fuzz/crashes/`` and makes the exit status 1: replay it with
``python fuzz/fuzz_NAME.py fuzz/crashes/FILE``, then turn it into a regression
test and add it to the seed corpus.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def run_one(name: str, seconds: int) -> tuple[bool, str]:
    """Fuzz one harness for ``seconds``; (found nothing, libFuzzer's last stats line)."""
    work, seeds, crashes = HERE / ".work" / name, HERE / "corpus" / name, HERE / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    command = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(work), str(seeds),
               f"-max_total_time={seconds}", f"-artifact_prefix={crashes}/{name}-",
               "-timeout=20", "-rss_limit_mb=2048", "-print_final_stats=1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            timeout=seconds + 120)
    runs = [line for line in result.stderr.splitlines() if "stat::number_of_executed_units" in line]
    summary = runs[-1].split(":")[-1].strip() + " runs" if runs else "no stats"
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
    return result.returncode == 0, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="total time, shared by the harnesses")
    length.add_argument("--seconds", type=int, help="time for each harness (default 10)")
    parser.add_argument("names", nargs="*", choices=[*HARNESSES, []], metavar="NAME",
                        help=f"harnesses to run (default all: {', '.join(HARNESSES)})")
    args = parser.parse_args(argv)
    names = args.names or HARNESSES
    seconds = args.seconds or (max(1, int(args.minutes * 60 / len(names)))
                               if args.minutes else 10)
    failed = []
    for name in names:
        started = time.monotonic()
        ok, summary = run_one(name, seconds)
        print(f"{name:<10} {'ok' if ok else 'CRASH':<6} {summary} in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        if not ok:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
