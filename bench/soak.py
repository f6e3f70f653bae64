"""Soak: mixed load for N minutes against one tcpkit server; nothing may grow or be lost.

    python bench/soak.py --minutes 10 [--mode async] [--json soak.json]

Runs reverse and factor clients (pipelined and one-request-per-connection, with
numbers big enough to go to the worker pool) and hostile ones mixed in (slowloris,
never-reading, resets, over-long lines, junk), all on loopback.  Every second it
samples the server's memory (PSS, with its children), open fds and threads.  At the end
it stops the server with SIGTERM and checks:

* zero replies lost or wrong for the well-behaved clients,
* zero tracebacks in the server's log, exit status 0,
* memory and threads flat: the least-squares slope over the run (after a
  warm-up) times the run's length stays under a small bound;
* no leak: once the load stops, the server's fds and children come back to
  what they were after the warm-up (hostile crowds make the fd count too noisy
  for a slope to mean much while they come and go; it is reported all the same).

Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import hostile  # noqa: E402
from helpers.net import abort, connect  # noqa: E402
from helpers.processes import open_fds, threads  # noqa: E402
from helpers.servers import LISTENING, script  # noqa: E402

# Fitted rise over the whole run that still counts as flat.
FLAT = {"pss_kb": 16 * 1024, "threads": 2}
SAMPLED = ("pss_kb", "fds", "threads")
WARM_UP = 0.15  # fraction of the run left out of the fit (pools start, caches fill)


@dataclass
class Tally:
    """Requests and replies of the well-behaved clients, and hostile actions taken."""

    requests: int = 0
    good: int = 0
    lost: int = 0
    hostile: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int, good: int) -> None:
        with self.lock:
            self.requests += requests
            self.good += good
            self.lost += requests - good

    def hit(self, kind: str) -> None:
        with self.lock:
            self.hostile[kind] = self.hostile.get(kind, 0) + 1


def start(mode: str, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """``tcpkit serve`` with both services on loopback; (process, ports by service)."""
    command = [*script("tcpkit"), "serve", "--mode", mode, "--idle-timeout", "5",
               "--listen", "reverse=127.0.0.1:0", "--listen", "factor=127.0.0.1:0"]
    stderr = log.open("wb")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = {m.group(3): int(m.group(2)) for m in LISTENING.finditer(log.read_text())}
        if len(found) == 2:
            return process, found
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


# -- well-behaved clients ------------------------------------------------------------


def reverse_pipelined(port: int, rng: random.Random) -> tuple[int, int]:
    lines = [b"soak %d %s" % (i, "é✓".encode() * rng.randrange(3))
             for i in range(rng.randrange(100, 3000))]
    reply = hostile.pipelined(port, lines).split(b"\n")[:-1]
    from tcpkit.services.reverse import reverse_line

    return len(lines), sum(a == reverse_line(b) for a, b in zip(reply, lines, strict=False))


def reverse_single(port: int, rng: random.Random) -> tuple[int, int]:
    word = b"single %d" % rng.randrange(10**6)
    return 1, int(hostile.well_behaved(port, word) == word[::-1] + b"\n")


def factor_mixed(port: int, rng: random.Random) -> tuple[int, int]:
    numbers = [rng.randrange(2, 10**rng.choice([3, 12, 19, 22, 26]))
               for _ in range(rng.randrange(1, 60))]
    reply = hostile.pipelined(port, [b"%d" % n for n in numbers]).split(b"\n")[:-1]
    return len(numbers), sum(product(r) == n for r, n in zip(reply, numbers, strict=False))


def product(reply: bytes) -> int:
    result = 1
    try:
        for factor in reply.split():
            result *= int(factor)
    except ValueError:
        return -1
    return result


# -- hostile clients -----------------------------------------------------------------


def hostile_action(ports: dict[str, int], rng: random.Random, tally: Tally) -> None:
    kind = rng.choice(["slowloris", "never-reading", "reset", "too-long", "junk", "abandon"])
    port = ports["factor" if kind in ("junk", "abandon") else "reverse"]
    with contextlib.suppress(OSError):
        if kind == "slowloris":
            with hostile.crowd(port, 20) as socks:
                for _ in range(3):
                    for sock in socks:
                        sock.send(b"x")
                    time.sleep(1)
        elif kind == "never-reading":
            with hostile.crowd(port, 3) as socks:
                hostile._push_without_reading(socks, 4 << 20, 1.0)
                for sock in socks:
                    abort(sock)
                socks.clear()
        elif kind == "reset":
            sock = connect(port)
            sock.sendall(b"half a line\nand more" * 100)
            abort(sock)
        elif kind == "too-long":
            hostile.pipelined(port, [b"z" * (2 << 20)])
        elif kind == "junk":
            hostile.pipelined(port, [bytes(rng.randrange(256) for _ in range(50))
                                     .replace(b"\n", b"") for _ in range(20)])
        elif kind == "abandon":  # a slow factorization whose client leaves at once
            sock = connect(port)
            sock.sendall(b"%d\n" % (rng.randrange(10**40, 10**41) * 1000003))
            time.sleep(0.2)
            abort(sock)
    tally.hit(kind)


def worker(job: str, ports: dict[str, int], stop: threading.Event, tally: Tally,
           seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        if job == "hostile":
            hostile_action(ports, rng, tally)
            stop.wait(rng.uniform(0.5, 2.0))
            continue
        client = {"reverse-pipelined": reverse_pipelined, "reverse-single": reverse_single,
                  "factor": factor_mixed}[job]
        port = ports["factor" if job == "factor" else "reverse"]
        tally.add(*client(port, rng))


def warm_up(ports: dict[str, int]) -> None:
    """Start what starts lazily (the factor worker pool) before the baseline is taken."""
    hostile.pipelined(ports["factor"], [b"18446744073709551617", b"42"])
    hostile.well_behaved(ports["reverse"])


# -- measuring -----------------------------------------------------------------------


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def sample(pid: int) -> dict[str, float]:
    return {"pss_kb": hostile.tree_pss_kb(pid), "fds": open_fds(pid),
            "threads": threads(pid)}


def soak(minutes: float, mode: str, workdir: Path) -> dict[str, object]:
    log = workdir / "soak-server.log"
    process, ports = start(mode, log)
    warm_up(ports)
    quiet = hostile.settle(process.pid, hostile.Snapshot.of(process.pid), timeout=2)
    tally, stop = Tally(), threading.Event()
    jobs = ["reverse-pipelined"] * 2 + ["reverse-single"] * 2 + ["factor"] * 2 + ["hostile"] * 2
    threads = [threading.Thread(target=worker, args=(job, ports, stop, tally, i), daemon=True)
               for i, job in enumerate(jobs)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        while (now := time.monotonic() - started) < minutes * 60:
            samples.append((now, sample(process.pid)))
            time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        after = hostile.settle(process.pid, quiet, timeout=20)
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    text = log.read_text(errors="replace")
    fitted = [(t, s) for t, s in samples if t >= WARM_UP * minutes * 60]
    duration = minutes * 60
    growth = {key: slope([(t, s[key]) for t, s in fitted]) * duration for key in SAMPLED}
    peak = {key: max(s[key] for _, s in samples) for key in SAMPLED}
    return {
        "minutes": minutes, "mode": mode, "requests": tally.requests, "good": tally.good,
        "lost": tally.lost, "hostile": tally.hostile, "tracebacks": text.count("Traceback"),
        "exit": code, "growth_over_run": growth, "peak": peak,
        "first": samples[0][1] if samples else {}, "last": samples[-1][1] if samples else {},
        "samples": len(samples),
        "flat": {key: growth[key] <= FLAT[key] for key in FLAT},
        "quiet_before": {"fds": quiet.fds, "children": quiet.children},
        "quiet_after": {"fds": after.fds, "children": after.children},
        "log_lines": text.count("\n"),
    }


def verdict(result: dict[str, object]) -> list[str]:
    """What failed (empty: the soak passed)."""
    problems = []
    if result["lost"]:
        problems.append(f"{result['lost']} replies lost or wrong")
    if result["tracebacks"]:
        problems.append(f"{result['tracebacks']} tracebacks in the server log")
    if result["exit"] != 0:
        problems.append(f"server exit status {result['exit']}")
    flat = result["flat"]
    assert isinstance(flat, dict)
    problems += [f"{key} not flat" for key, ok in flat.items() if not ok]
    before, after = result["quiet_before"], result["quiet_after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    problems += [f"{key} leaked: {before[key]} before, {after[key]} after"
                 for key in before if after[key] > before[key]]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--mode", default="async")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tcpkit-soak-") as tmp:
        result = soak(args.minutes, args.mode, Path(tmp))
    growth, peak = result["growth_over_run"], result["peak"]
    assert isinstance(growth, dict) and isinstance(peak, dict)
    print(f"soak {args.minutes:g} min, mode {args.mode}: {result['requests']} requests, "
          f"{result['lost']} lost, hostile {result['hostile']}")
    print(f"  fitted growth over the run: PSS {growth['pss_kb'] / 1024:+.1f} MB, "
          f"fds {growth['fds']:+.1f}, threads {growth['threads']:+.1f}; "
          f"peak PSS {peak['pss_kb'] / 1024:.1f} MB, fds {peak['fds']:.0f}, "
          f"threads {peak['threads']:.0f}")
    print(f"  quiet fds/children before {result['quiet_before']}, after {result['quiet_after']}; "
          f"tracebacks {result['tracebacks']}, exit status {result['exit']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    problems = verdict(result)
    print("FAILED: " + "; ".join(problems) if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

