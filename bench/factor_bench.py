"""The factor engine's benchmark: tcpkit's factor service against its anchors, in one run.

    python bench/factor_bench.py [--duration 5] [--repeat 3] [--per-class 3] [--with-67]

Prints a Markdown table of medians and ratios (paste it into BENCHMARKS.md):

1. throughput -- 100,000 random 64-bit numbers (bench/factor_numbers.py, fixed
   seed) pipelined through one connection by loadgen (``--mode stream``) versus
   ``factor < numbers.txt`` (GNU coreutils), each pinned to one core
   (``taskset -c 0``; loadgen on core 1);
2. rr C=100 -- 100 clients each sending one 64-bit number at a time, versus the
   reverse service under the same load (32-byte lines);
3. per class of issue 4's table -- median time per number through the server
   (one request at a time, over loopback, default worker pool) versus the best
   library called directly in one process (FLINT or PARI, whichever is faster
   for that class) and versus GNU factor (one process per number, with a
   timeout).

Everything is started and stopped here, by PID.  Only loopback is used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
NUMBERS = BUILD / "factor"
LOADGEN_SRC = HERE.parent.parent / "shared" / "bench" / "loadgen.c"
LISTENING = re.compile(r"Listening on \S+:(\d+) ")
CLASSES = ["semi29", "semi39", "semi48", "semi58", "smooth256", "smooth512"]
SLOW_CLASSES = {"semi48", "semi58", "semi67"}  # --per-class numbers of these, all of the others
GNU_TIMEOUT = 10.0  # seconds per number for GNU factor


def tcpkit_command() -> list[str]:
    beside = Path(sys.executable).parent / "tcpkit"
    return [str(beside) if beside.exists() else "tcpkit"]


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") else command


class Server:
    """``tcpkit serve SERVICE`` on 127.0.0.1:0, pinned to CPU 0."""

    def __init__(self, service: str, *extra: str) -> None:
        command = pinned(0, [*tcpkit_command(), "serve", service, "--listen", "127.0.0.1:0",
                             "--log-level", "warning", *extra])
        # The listening line is logged at info level: ask for it, then quieten.
        command[command.index("warning")] = "info"
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert self.process.stderr is not None
        line = self.process.stderr.readline().decode()
        found = LISTENING.search(line)
        if not found:
            self.stop()
            raise RuntimeError(f"server did not start: {line}")
        self.port = int(found.group(1))
        self.process.stderr.close()  # the server logs per connection: never let the pipe fill

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def loadgen_binary() -> Path:
    binary = BUILD / "loadgen"
    if not binary.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(LOADGEN_SRC)], check=True)
    return binary


def loadgen(port: int, *args: str) -> dict[str, float]:
    done = subprocess.run(pinned(1, [str(loadgen_binary()), "--host", "127.0.0.1",
                                     "--port", str(port), *args]),
                          capture_output=True, check=True, timeout=300)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def gnu_rate(path: Path) -> float:
    """Numbers per second of ``taskset -c 0 factor < path``."""
    count = sum(1 for _ in path.open())
    with path.open("rb") as stdin:
        start = time.perf_counter()
        subprocess.run(pinned(0, ["factor"]), stdin=stdin, stdout=subprocess.DEVNULL,
                       check=True, timeout=600)
    return count / (time.perf_counter() - start)


def throughput(duration: float, repeat: int) -> list[str]:
    numbers = NUMBERS / "random64.txt"
    ours, gnu, errors = [], [], 0
    with Server("factor", "--factor-workers", "1") as server:
        for _ in range(repeat):
            result = loadgen(server.port, "--mode", "stream", "-c", "1", "-w", "1000",
                             "-d", str(duration), "--expect", "factor",
                             "--payload-file", str(numbers))
            ours.append(result["rps"])
            errors += int(result["errors"])
            gnu.append(gnu_rate(numbers))
    ratio = statistics.median(ours) / statistics.median(gnu)
    return [f"| stream, 1 connection, 100k random 64-bit | {statistics.median(ours):,.0f}/s "
            f"| GNU factor (1 core) {statistics.median(gnu):,.0f}/s | **{ratio:.2f}x** "
            f"| runs: ours {_list(ours)}, GNU {_list(gnu)}; errors {errors} |"]


def rr100(duration: float, repeat: int) -> list[str]:
    numbers = NUMBERS / "random64.txt"
    ours, reverse = [], []
    for _ in range(repeat):
        with Server("factor", "--factor-workers", "1") as server:
            ours.append(loadgen(server.port, "--mode", "rr", "-c", "100", "-d", str(duration),
                                "--expect", "factor", "--payload-file", str(numbers))["rps"])
        with Server("reverse") as server:
            reverse.append(loadgen(server.port, "--mode", "rr", "-c", "100", "-l", "32",
                                   "-d", str(duration))["rps"])
    ratio = statistics.median(ours) / statistics.median(reverse)
    return [f"| rr C=100, 64-bit numbers | {statistics.median(ours):,.0f}/s "
            f"| reverse service {statistics.median(reverse):,.0f}/s | **{ratio:.2f}x** "
            f"| runs: factor {_list(ours)}, reverse {_list(reverse)} |"]


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


LIBRARY_SCRIPT = """
import json, statistics, sys, time, flint
numbers = [int(x) for x in sys.argv[1:]]
out = {}
def timed(f):
    ts = []
    for n in numbers:
        t = time.perf_counter(); f(n); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
out["flint"] = timed(lambda n: flint.fmpz(n).factor())
try:
    import cypari2
    pari = cypari2.Pari(sizemax=512 << 20)
    out["pari"] = timed(lambda n: pari.factor(n))
except ImportError:
    pass
print(json.dumps(out))
"""


def library_medians(numbers: list[int]) -> dict[str, float]:
    done = subprocess.run(pinned(0, [sys.executable, "-c", LIBRARY_SCRIPT,
                                     *map(str, numbers)]),
                          capture_output=True, check=True, timeout=1200)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def server_median(port: int, numbers: list[int]) -> float:
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        reader = sock.makefile("rb")
        for n in numbers:
            start = time.perf_counter()
            sock.sendall(b"%d\n" % n)
            reply = reader.readline()
            times.append(time.perf_counter() - start)
            if not reply or reply.startswith(b"error"):
                raise RuntimeError(f"{n}: {reply!r}")
    return statistics.median(times)


def gnu_median(numbers: list[int]) -> float | None:
    times = []
    for n in numbers:
        start = time.perf_counter()
        try:
            subprocess.run(pinned(0, ["factor", str(n)]), stdout=subprocess.DEVNULL,
                           check=True, timeout=GNU_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_class(per_class: int, classes: list[str], repeat: int) -> list[str]:
    """Library and server alternate, ``repeat`` times, so drifting load hits both alike."""
    rows = []
    with Server("factor", "--time-limit", "120") as server:
        warm = [int(x) for x in (NUMBERS / "semi29.txt").read_text().split()]
        server_median(server.port, warm)  # start the workers (and PARI in them) untimed
        for name in classes:
            limit = per_class if name in SLOW_CLASSES else None  # the others: all 7
            numbers = [int(x) for x in (NUMBERS / f"{name}.txt").read_text().split()][:limit]
            libraries: dict[str, list[float]] = {}
            ours = []
            for _ in range(repeat):
                for library, seconds in library_medians(numbers).items():
                    libraries.setdefault(library, []).append(seconds)
                ours.append(server_median(server.port, numbers))
            medians = {library: statistics.median(v) for library, v in libraries.items()}
            best_name = min(medians, key=medians.__getitem__)
            best, mine = medians[best_name], statistics.median(ours)
            gnu = gnu_median(numbers[:1]) if name in ("semi29", "smooth256", "smooth512") else None
            gnu_text = (f"{_time(gnu)} (**{gnu / mine:.0f}x** faster)" if gnu is not None
                        else f"> {GNU_TIMEOUT:g} s or not run")
            others = ", ".join(f"{k} {_time(v)}" for k, v in medians.items() if k != best_name)
            rows.append(f"| {name} | {_time(mine)} | {best_name} {_time(best)} ({others}) "
                        f"| **{mine / best:.2f}x** | {gnu_text} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per loadgen run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (medians)")
    parser.add_argument("--per-class", type=int, default=3,
                        help="numbers per slow class (semi48, semi58, semi67)")
    parser.add_argument("--with-67", action="store_true", help="also semi67 (minutes)")
    parser.add_argument("--classes", help=f"comma-separated (default {','.join(CLASSES)})")
    parser.add_argument("--only", choices=("throughput", "rr", "classes"), action="append")
    args = parser.parse_args()
    if not (NUMBERS / "random64.txt").exists():
        subprocess.run([sys.executable, str(HERE / "factor_numbers.py")], check=True)
    only = set(args.only or ("throughput", "rr", "classes"))
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})  # this script is a client: off the servers' core
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"python {sys.version.split()[0]}")
    if only & {"throughput", "rr"}:
        print("\n| cell | tcpkit factor | anchor | ratio | notes |\n|---|---|---|---|---|")
    if "throughput" in only:
        print("\n".join(throughput(args.duration, args.repeat)), flush=True)
    if "rr" in only:
        print("\n".join(rr100(args.duration, args.repeat)), flush=True)
    if "classes" in only:
        classes = args.classes.split(",") if args.classes else list(CLASSES)
        classes += ["semi67"] if args.with_67 else []
        print("\n| class | through the server | best library direct | ratio | GNU factor |\n"
              "|---|---|---|---|---|")
        print("\n".join(per_class(args.per_class, classes, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
