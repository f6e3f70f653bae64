"""The benchmark of SPEC §8: tcpkit in every mode against C and the usual peers.

One command builds the C load generator and the C epoll server from the shared
bench directory, starts each server in turn pinned to CPU 0 (the load generator
runs on CPU 1), drives it through the cells below, and writes:

* a JSON-lines file with every measurement (one line per server, cell and
  repetition),
* the tables between the ``bench`` markers of ``BENCHMARKS.md`` (medians, p99,
  RSS, and every figure as a ratio to C epoll from the same run),
* a PNG plot of requests per second per server and cell.

Everything stays on 127.0.0.1, every step is bounded in time, and servers are
started and stopped by PID only.  Repetitions are interleaved (each repetition
visits every server, in a rotated order) so that a noisy neighbour slows all
servers alike rather than one of them.

Cells and servers are tables (:data:`CELLS`, :data:`SERVERS`): a new cell is
one more row, e.g. a factor cell with ``--payload-file`` and ``--expect factor``
and ``service="factor"`` (servers that do not speak that service are skipped).
The chat room's fan-out cell (issue 10) is such a row too: its driver is
``fanout.c`` (this directory) instead of loadgen, its servers the chat anchors
of ``bench/anchors/`` and ``tcpkit serve chat``, its figure deliveries/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_CPUS = "0"
LOADGEN_CPUS = "1"
MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"


# --------------------------------------------------------------------------
# The tables: cells and servers.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One load pattern.  ``args`` is its driver's arguments, with placeholders:
    ``{seconds}`` (the run's seconds per cell), ``{hold}`` (connections held),
    ``{idle}`` (hold's idle period), ``{shared}`` (the shared bench directory) and
    ``{here}`` (this directory)."""

    name: str
    label: str
    args: tuple[str, ...]
    service: str = "reverse"
    # hold cells: fresh server, all connections must be served before and after
    # the idle period, and the RSS growth per connection is reported.
    hold: bool = False
    baseline: str = "c_epoll"  # every figure of the cell is also shown as a ratio to it
    driver: str = "loadgen"  # the C program in the build directory that drives the cell
    unit: str = "request"  # what the driver's "rps" and "requests" count


LINE = ("-l", "32")
CELLS: list[Cell] = [
    Cell("rr-c1", "rr C=1", ("--mode", "rr", "-c", "1", *LINE, "-d", "{seconds}")),
    Cell("rr-c100", "rr C=100", ("--mode", "rr", "-c", "100", *LINE, "-d", "{seconds}")),
    Cell("rr-c1000", "rr C=1000", ("--mode", "rr", "-c", "1000", *LINE, "-d", "{seconds}")),
    Cell("conn-c10", "conn C=10", ("--mode", "conn", "-c", "10", *LINE, "-d", "{seconds}")),
    Cell("stream-w64", "stream W=64",
         ("--mode", "stream", "-c", "1", "-w", "64", *LINE, "-d", "{seconds}")),
    Cell("hold", "hold C={hold}", ("--mode", "hold", "-c", "{hold}", *LINE, "-d", "{idle}"),
         hold=True),
    # Issue 10: a chat room of 100 members, each sending in a closed loop (its next
    # line once every other member has its last one); a line counts once per recipient.
    Cell("fanout-m100", "fan-out M=100", ("-m", "100", *LINE, "-d", "{seconds}"),
         service="chat", baseline="tcpkit-async", driver="fanout", unit="delivery"),
]


@dataclass(frozen=True)
class Server:
    """A server under test.  ``argv(ctx, port, service)`` is its command line."""

    name: str
    argv: Callable[[Context, int, str], list[str]]
    services: tuple[str, ...] = ("reverse",)
    cpus: str = SERVER_CPUS
    needs: tuple[str, ...] = ()  # executables, or "py:module" for Python modules
    no_hold: str = ""  # why the hold cell does not apply, if it does not
    # A process per client: CPU per request is not measured (children that exit
    # unreaped take their CPU time with them); RSS sums every process.
    forks: bool = False
    optional: bool = False  # only with --servers all (or by name): keeps the default run short


@dataclass
class Context:
    """Paths and options every step needs."""

    shared: Path
    build: Path
    python: str
    tcpkit: list[str]
    seconds: float
    idle: float
    hold: int

    def anchor(self, name: str) -> str:
        return str(self.shared / "anchors" / name)


ONE_AT_A_TIME = "serves one client at a time: the others would wait forever"
PROCESS_EACH = "a process per client: 10,000 processes would swamp a shared machine"


def tcpkit(mode: str, *extra: str) -> Callable[[Context, int, str], list[str]]:
    def argv(ctx: Context, port: int, service: str) -> list[str]:
        return [*ctx.tcpkit, "serve", service, "--mode", mode, "--listen", f"127.0.0.1:{port}",
                "--log-level", "warning", *extra]
    return argv


def python_anchor(script: str, *extra: str) -> Callable[[Context, int, str], list[str]]:
    def argv(ctx: Context, port: int, service: str) -> list[str]:
        return [ctx.python, ctx.anchor(script), str(port), *extra]
    return argv


def chat_anchor(runtime: str, script: str, *extra: str) -> Callable[[Context, int, str],
                                                                    list[str]]:
    """A chat anchor of this repository's ``bench/anchors/`` (``python``: this interpreter)."""
    def argv(ctx: Context, port: int, service: str) -> list[str]:
        program = ctx.python if runtime == "python" else runtime
        return [program, str(HERE / "anchors" / script), str(port), *extra]
    return argv


CHAT = ("chat",)


SERVERS: list[Server] = [
    Server("c_epoll", lambda ctx, port, _: [str(ctx.build / "c_epoll_reverse"), str(port)]),
    # chat: the tcpkit-chat example (pip install -e examples/chat); skipped without it.
    Server("tcpkit-async", tcpkit("async"), services=("reverse", "factor", "chat")),
    Server("tcpkit-thread", tcpkit("thread"), services=("reverse", "factor", "chat")),
    Server("tcpkit-fork", tcpkit("fork"), services=("reverse", "factor"), no_hold=PROCESS_EACH,
           forks=True),
    Server("tcpkit-iterative", tcpkit("iterative"), services=("reverse", "factor"),
           no_hold=ONE_AT_A_TIME),
    # Two worker processes on two cores: the load generator shares them.
    Server("tcpkit-async-w2", tcpkit("async", "--workers", "2"), services=("reverse", "factor"),
           cpus="0-1"),
    Server("asyncio-streams", python_anchor("py_asyncio_streams.py")),
    Server("uvloop-streams", python_anchor("py_asyncio_streams.py", "--uvloop"),
           needs=("py:uvloop",)),
    Server("uvloop-protocol", python_anchor("py_asyncio_protocol.py", "--uvloop"),
           needs=("py:uvloop",)),
    Server("socketserver-thread", python_anchor("py_socketserver.py", "thread")),
    Server("socketserver-fork", python_anchor("py_socketserver.py", "fork"),
           no_hold=PROCESS_EACH, forks=True),
    Server("perl-iterative",
           lambda ctx, port, _: ["perl", ctx.anchor("perl_server.pl"), str(port), "iterative"],
           needs=("perl",), no_hold=ONE_AT_A_TIME),
    Server("perl-fork",
           lambda ctx, port, _: ["perl", ctx.anchor("perl_server.pl"), str(port), "fork"],
           needs=("perl",), no_hold=PROCESS_EACH, forks=True),
    Server("node-net", lambda ctx, port, _: ["node", ctx.anchor("node_net.js"), str(port)],
           needs=("node",)),
    Server("twisted", python_anchor("py_twisted.py"), needs=("py:twisted",), optional=True),
    Server("trio", python_anchor("py_trio.py"), needs=("py:trio",), optional=True),
    Server("gevent", python_anchor("py_gevent.py"), needs=("py:gevent",), optional=True),
    Server("chat-twisted", chat_anchor("python", "chat_twisted.py"), services=CHAT,
           needs=("py:twisted",)),
    Server("chat-asyncio", chat_anchor("python", "chat_asyncio.py"), services=CHAT),
    Server("chat-uvloop", chat_anchor("python", "chat_asyncio.py", "--uvloop"), services=CHAT,
           needs=("py:uvloop",)),
    Server("chat-node", chat_anchor("node", "chat_node.js"), services=CHAT, needs=("node",)),
    Server("chat-perl", chat_anchor("perl", "chat_perl.pl"), services=CHAT, needs=("perl",)),
]

# tcpkit's targets (issue 13), each checked against this run's medians:
# (tcpkit server, peer, cells, lowest req/s ratio, highest CPU-per-request ratio).
# A CPU limit of None means the target names requests/s only.
CellTarget = tuple[str, str, tuple[str, ...], float, float | None]
EVERY_CELL = ("rr-c1", "rr-c100", "rr-c1000", "conn-c10", "stream-w64")
TARGETS: tuple[CellTarget, ...] = (
    ("tcpkit-async", "c_epoll", ("rr-c100", "rr-c1000", "stream-w64"), 0.90, 1.15),
    ("tcpkit-async", "uvloop-protocol", ("conn-c10",), 1.0, None),
    ("tcpkit-thread", "socketserver-thread", EVERY_CELL, 1.0, 1.0),
    ("tcpkit-fork", "perl-fork", EVERY_CELL, 1.0, None),
    ("tcpkit-iterative", "perl-iterative", EVERY_CELL, 1.0, None),
    # Issue 10: tcpkit ahead of every chat anchor in the fan-out cell.
    *(("tcpkit-async", anchor, ("fanout-m100",), 1.0, None)
      for anchor in ("chat-twisted", "chat-asyncio", "chat-uvloop", "chat-node", "chat-perl")),
)
HOLD_TARGET_KB = 2.0
# Issue 13: a process per client, yet less memory than Perl's at C=1000.
RSS_TARGETS = (("tcpkit-fork", "perl-fork", "rr-c1000"),)


# --------------------------------------------------------------------------
# Processes: build, start, watch, stop.
# --------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(shared: Path, out: Path) -> None:
    """Compile loadgen, the C epoll server and the fan-out driver (again only when a
    source changed)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, src in (("loadgen", shared / "loadgen.c"),
                      ("c_epoll_reverse", shared / "c_epoll_reverse.c"),
                      ("fanout", HERE / "fanout.c")):
        binary = out / name
        if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
            continue
        progress(f"building {binary}")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(src)], check=True, timeout=120)


def available(server: Server) -> str:
    """Empty if the server can run here, else why not."""
    for need in server.needs:
        if need.startswith("py:"):
            if importlib.util.find_spec(need[3:]) is None:
                return f"Python module {need[3:]} not installed"
        elif shutil.which(need) is None:
            return f"{need} not installed"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``.

    One pass over /proc's processes (a parent map) rather than a walk of every
    thread's ``children`` file: a thread-per-client server holding 10,000
    connections would make the latter 10,000 reads per sample.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def rss_kb(pids: Iterable[int]) -> int:
    """Total resident memory of ``pids`` (shared pages are counted in each)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def tree_rss_kb(pid: int) -> int:
    return rss_kb([pid, *descendants(pid)])


TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a server: itself, its reaped children, and its live descendants.

    On a shared machine the CPU a server spends per request is a steadier
    measure of its efficiency than requests per second.
    """
    total = 0
    for index, each in enumerate([pid, *descendants(pid)]):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if index == 0:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped children
    return total / TICKS


class RssSampler:
    """Samples the RSS of a process tree in the background; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_kb(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss_kb(self.pid))


class Rejected(Exception):
    """The server refused to start (e.g. a mode this tcpkit does not have)."""


@dataclass
class Running:
    """A started server process."""

    server: Server
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


def start(ctx: Context, server: Server, service: str, logs: Path) -> Running:
    """Start ``server`` pinned to its CPUs; return once it accepts connections."""
    port = free_port()
    log = logs / f"{server.name}.log"
    argv = ["taskset", "-c", server.cpus, *server.argv(ctx, port, service)]
    with open(log, "ab") as err:
        err.write(f"$ {shlex.join(argv)}\n".encode())
        err.flush()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    running = Running(server, process, port, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Rejected(f"exited with status {process.returncode}: {running.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return running
        except OSError:
            time.sleep(0.05)
    stop(running)
    raise Rejected("did not accept connections within 20 s")


def stop(running: Running) -> None:
    """SIGTERM the server (its children after it), SIGKILL what is left: by PID only."""
    process = running.process
    children = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def run_driver(ctx: Context, cell: Cell, port: int) -> dict[str, Any]:
    """One run of the cell's driver (loadgen or fanout) against ``port``; its JSON line
    as a dict, with ``failed`` when it found a wrong or missing reply."""
    values = {"seconds": ctx.seconds, "hold": ctx.hold, "idle": ctx.idle,
              "shared": ctx.shared, "here": HERE}
    args = [arg.format(**values) for arg in cell.args]
    argv = ["taskset", "-c", LOADGEN_CPUS, str(ctx.build / cell.driver),
            "--host", "127.0.0.1", "--port", str(port), *args]
    # hold waits up to 60 s for each of its two rounds when a server is stuck;
    # fanout up to 20 s to seat its members and 15 s for the last lines and QUITs.
    limit = ctx.seconds + (150 if cell.hold else 45)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"{cell.driver} did not finish within {limit:.0f} s"}
    why = done.stderr.decode(errors="replace").strip()
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return {"failed": f"{cell.driver}: {why[-200:]}"}
    if done.returncode != 0:  # fanout: a delivery missing, duplicated or out of order
        result["failed"] = f"{cell.driver} exit {done.returncode}: {why[:200]}"
    return result


# --------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------


@dataclass
class Plan:
    servers: list[Server]
    cells: list[Cell]
    repeat: int
    records: list[dict[str, Any]] = field(default_factory=list)


def estimate(plan: Plan, ctx: Context) -> float:
    """Seconds the run should take (measured overheads: server start, loadgen set-up)."""
    total = 0.0
    for server in plan.servers:
        for cell in plan.cells:
            if cell.service not in server.services:
                continue
            if cell.hold:
                total += 0 if server.no_hold else ctx.idle + 2.5 + ctx.hold / 4000
            else:  # fanout also seats its members, warms up and waits for the QUITs
                total += ctx.seconds + (1.5 if cell.driver == "fanout" else 0.4)
        total += 1.0
    return total * plan.repeat


def measure(ctx: Context, plan: Plan, raw: Path, logs: Path, stamp: str) -> None:
    """Every repetition visits every server (in a rotated order) and every cell."""
    total = plan.repeat * sum(1 for s in plan.servers for c in plan.cells
                              if c.service in s.services)
    done = 0
    rejected: dict[tuple[str, str], str] = {}
    with open(raw, "a") as out:
        def record(entry: dict[str, Any]) -> None:
            entry = {"run": stamp, **entry}
            plan.records.append(entry)
            out.write(json.dumps(entry) + "\n")
            out.flush()

        for rep in range(plan.repeat):
            shift = rep % len(plan.servers)
            order = plan.servers[shift:] + plan.servers[:shift]
            for server in order:
                for group in cell_groups(plan.cells, server):
                    for cell, result in serve_cells(ctx, server, group, logs, rejected):
                        done += 1
                        record({"rep": rep + 1, "server": server.name, "cell": cell.name,
                                "cpus": server.cpus, "load1": round(os.getloadavg()[0], 2),
                                **result})
                        progress(f"[{done}/{total}] rep {rep + 1} {server.name:<20} "
                                 f"{label(cell, ctx):<13} {describe(result)}")


def cell_groups(cells: Sequence[Cell], server: Server) -> Iterator[list[Cell]]:
    """Cells that share one server process: each service's timed cells; each hold alone."""
    timed: dict[str, list[Cell]] = {}
    holds: list[Cell] = []
    for cell in cells:
        if cell.service not in server.services:
            continue
        if cell.hold:
            holds.append(cell)
        else:
            timed.setdefault(cell.service, []).append(cell)
    yield from timed.values()
    for cell in holds:
        yield [cell]


def serve_cells(ctx: Context, server: Server, cells: list[Cell], logs: Path,
                rejected: dict[tuple[str, str], str]) -> Iterator[tuple[Cell, dict[str, Any]]]:
    """Start ``server`` once for ``cells`` (one service's) and measure each in turn.

    A refusal is remembered per server and service: a tcpkit without the chat
    example refuses ``serve chat`` but still serves ``reverse``.
    """
    key = (server.name, cells[0].service)
    if key in rejected:
        for cell in cells:
            yield cell, {"skipped": rejected[key]}
        return
    if cells[0].hold and server.no_hold:
        yield cells[0], {"skipped": server.no_hold}
        return
    try:
        running = start(ctx, server, cells[0].service, logs)
    except Rejected as exc:
        rejected[key] = f"server rejected: {exc}"
        for cell in cells:
            yield cell, {"skipped": rejected[key]}
        return
    try:
        for cell in cells:
            pid = running.process.pid
            children = len(descendants(pid))
            before, cpu = tree_rss_kb(pid), tree_cpu_seconds(pid)
            with RssSampler(pid) as sampler:
                result = run_driver(ctx, cell, running.port)
            cpu = tree_cpu_seconds(pid) - cpu
            result.update(rss_kb_before=before, rss_kb=sampler.peak, cpu_s=round(cpu, 3))
            # fanout's CPU time spans its warm-up and drain too: divide by every delivery.
            count = result.get("deliveries_total") or result.get("requests")
            if count:
                result["cpu_us_per_req"] = round(cpu * 1e6 / count, 2)
            if cell.hold and "failed" not in result:
                conns = result.get("connections") or 1
                result["rss_growth_kb_per_conn"] = round((sampler.peak - before) / conns, 3)
            if running.process.poll() is not None:
                result["failed"] = f"server died: {running.tail()}"
            if server.forks:
                result.pop("cpu_us_per_req", None)
            yield cell, result
            if "failed" in result and running.process.poll() is not None:
                break
            if server.forks:
                settle(pid, children)
    finally:
        stop(running)


def settle(pid: int, children: int, limit: float = 15.0) -> None:
    """Wait (boundedly) until a forking server's children from the last cell are gone,
    so that one cell's leftovers do not slow the next."""
    deadline = time.monotonic() + limit
    while len(descendants(pid)) > children and time.monotonic() < deadline:
        time.sleep(0.1)


def label(cell: Cell, ctx: Context) -> str:
    return cell.label.format(hold=ctx.hold)


def plural(unit: str) -> str:
    return unit[:-1] + "ies" if unit.endswith("y") else unit + "s"


def describe(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    text = (f"{result['rps']:>11,.0f} req/s  p99 {result['p99_us'] / 1000:7.2f} ms  "
            f"RSS {result['rss_kb'] / 1024:7.1f} MB")
    if "messages_per_s" in result:  # fanout
        text = (f"{result['rps']:>11,.0f} deliveries/s ({result['messages_per_s']:,.0f} "
                f"messages/s)  p99 {result['p99_us'] / 1000:7.2f} ms  "
                f"RSS {result['rss_kb'] / 1024:7.1f} MB")
    if "cpu_us_per_req" in result:
        text += f"  CPU {result['cpu_us_per_req']:6.2f} us/req"
    if "held_ok" in result:
        text = (f"held {result['held_first']}/{result['held_ok']} of {result['connections']}  "
                f"RSS {result['rss_kb_before'] / 1024:.1f} -> {result['rss_kb'] / 1024:.1f} MB "
                f"({result['rss_growth_kb_per_conn']:.2f} KB/conn)")
    if result.get("errors") or result.get("connect_errors"):
        text += f"  errors {result['errors']} connect_errors {result['connect_errors']}"
    return text


# --------------------------------------------------------------------------
# Summary: medians and ratios.
# --------------------------------------------------------------------------


@dataclass
class Figure:
    """Medians of one server in one cell."""

    rps: float = 0.0
    p99_ms: float = 0.0
    rss_mb: float = 0.0
    cpu_us: float = 0.0
    has_cpu: bool = True
    growth_kb: float = 0.0
    held: str = ""
    runs: int = 0
    errors: int = 0
    note: str = ""
    skipped: bool = False


def summarize(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Figure]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in records:
        grouped.setdefault((entry["server"], entry["cell"]), []).append(entry)
    figures: dict[tuple[str, str], Figure] = {}
    for key, entries in grouped.items():
        good = [e for e in entries if "rps" in e and "failed" not in e]
        if not good:
            first = entries[0]
            if "skipped" in first:
                figures[key] = Figure(note=first["skipped"], skipped=True)
            else:
                figures[key] = Figure(note=f"failed: {first.get('failed')}")
            continue
        failed = [e["failed"] for e in entries if "failed" in e]
        figure = Figure(
            rps=statistics.median(e["rps"] for e in good),
            p99_ms=statistics.median(e["p99_us"] for e in good) / 1000,
            rss_mb=statistics.median(e["rss_kb"] for e in good) / 1024,
            cpu_us=statistics.median(e.get("cpu_us_per_req", 0.0) for e in good),
            has_cpu=all("cpu_us_per_req" in e for e in good),
            runs=len(good),
            errors=sum(e["errors"] + e["connect_errors"] for e in good),
            note=f"{len(failed)} run(s) failed: {failed[0]}" if failed else "",
        )
        if "held_ok" in good[0]:
            figure.growth_kb = statistics.median(e["rss_growth_kb_per_conn"] for e in good)
            figure.held = ", ".join(f"{e['held_first']}/{e['held_ok']}" for e in good)
        figures[key] = figure
    return figures


def ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------
# Reports: markdown and plot.
# --------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except OSError:
            return "absent"

    model = re.search(r"Model name:\s*(.+)", out("lscpu"))
    uvloop = "absent"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        uvloop = importlib.metadata.version("uvloop")
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop,
        "perl": out("perl", "-e", "print $^V"),
        "node": out("node", "--version"),
        "gcc": out("gcc", "-dumpfullversion"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def markdown(plan: Plan, ctx: Context, info: dict[str, str], command: str, stamp: str,
             plot: Path | None, raw: Path, notes: Sequence[str]) -> str:
    figures = summarize(plan.records)
    names = [s.name for s in plan.servers]
    timed = [c for c in plan.cells if not c.hold]
    holds = [c for c in plan.cells if c.hold]
    lines = [
        f"## Every server and cell: `bench/run.py` run of {stamp}",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}; "
        f"load average at start {info['load']}",
        f"- Versions: Python {info['python']}, uvloop {info['uvloop']}, perl {info['perl']}, "
        f"node {info['node']}, gcc {info['gcc']}",
        f"- Command: `{command}`",
        f"- {ctx.seconds:g} s per cell, {plan.repeat} repetition(s), medians shown; "
        f"hold: {ctx.hold} connections idle {ctx.idle:g} s. Servers pinned to CPU "
        f"{SERVER_CPUS} (`tcpkit-async-w2`: CPUs 0-1, shared with the load generator), "
        f"loadgen to CPU {LOADGEN_CPUS}; 32-byte lines on 127.0.0.1.",
        f"- Raw measurements: `{rel(raw)}`",
        *(f"- {note}" for note in notes),
    ]
    if any(c.driver == "fanout" for c in timed):
        lines.append("- Fan-out: `bench/fanout.c` (CPU 1) seats M members in one chat room, "
                     "then each sends a line once every other member has its previous one; "
                     "a line counts once per recipient (deliveries/s); every delivery is "
                     "checked (once, intact, in order per sender). Servers: the chat anchors "
                     "of `bench/anchors/` and `tcpkit serve chat`.")
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in timed:  # one set of tables per baseline and unit: reverse, fan-out
        groups.setdefault((cell.baseline, cell.unit), []).append(cell)
    for group in groups.values():
        lines += timed_tables(figures, [n for n in names if any(
            (n, c.name) in figures for c in group)], group, ctx)
    for cell in holds:
        lines += ["", f"### {label(cell, ctx)}: idle connections "
                  f"(served before/after the idle period, per repetition)", "",
                  "| server | served before/after | peak RSS MB | RSS growth KB/conn "
                  "| ratio to C epoll |", "|---|---|---:|---:|---:|"]
        ref = figures.get((cell.baseline, cell.name))
        for name in names:
            fig = figures.get((name, cell.name))
            if fig is None:
                continue
            if not fig.runs:
                lines.append(f"| {name} | {'skipped' if fig.skipped else fig.note} | | | |")
                continue
            r = ratio(fig.growth_kb, ref.growth_kb) if ref and ref.runs else None
            lines.append(f"| {name} | {fig.held} | {fig.rss_mb:.1f} | {fig.growth_kb:.2f} "
                         f"| {fmt_ratio(r)} |")
    lines += targets(figures, plan, ctx)
    errors = [f"{name} {cell}: {fig.errors} errors" for (name, cell), fig in figures.items()
              if fig.errors]
    failures = [f"{name} {cell}: {fig.note}" for (name, cell), fig in figures.items()
                if fig.note and not fig.skipped]
    if errors or failures:
        lines += ["", "### Problems seen (⚠)", "", *(f"- {p}" for p in errors + failures)]
    skipped = sorted({f"{name}: {fig.note}" for (name, _), fig in figures.items()
                      if fig.skipped})
    if skipped:
        lines += ["", "### Skipped", "", *(f"- {s}" for s in skipped)]
    if plot is not None:
        lines += ["", f"![requests per second per server and cell]({rel(plot)})"]
    return "\n".join(lines) + "\n"


def timed_tables(figures: dict[tuple[str, str], Figure], names: Sequence[str],
                 cells: Sequence[Cell], ctx: Context) -> list[str]:
    """Throughput, p99, CPU and RSS of ``cells`` (one baseline, one unit)."""
    ref = "C epoll" if cells[0].baseline == "c_epoll" else cells[0].baseline
    unit = cells[0].unit
    units = plural(unit)
    short = "req" if unit == "request" else units
    return [
        *metric_table(f"{units.capitalize()} per second (ratio to {ref})", figures, names,
                      cells, ctx, lambda f: f.rps, lambda v: f"{v:,.0f}", mark_problems=True),
        *metric_table(f"p99 latency, ms (ratio to {ref}; lower is better)", figures,
                      names, cells, ctx, lambda f: f.p99_ms, lambda v: f"{v:.2f}"),
        *metric_table(f"Server CPU time per {unit}, µs (ratio to {ref}; lower is "
                      f"better; steadier than {short}/s on a busy machine; not measured for "
                      "servers that fork per client)", figures, names, cells, ctx,
                      lambda f: f.cpu_us if f.has_cpu else None, lambda v: f"{v:.2f}"),
        *metric_table(f"Peak RSS, MB, server and its children (ratio to {ref}; a "
                      "process per client counts shared pages in every process)",
                      figures, names, cells, ctx, lambda f: f.rss_mb, lambda v: f"{v:.1f}"),
    ]


def metric_table(title: str, figures: dict[tuple[str, str], Figure], names: Sequence[str],
                 cells: Sequence[Cell], ctx: Context, value: Callable[[Figure], float | None],
                 fmt: Callable[[float], str], mark_problems: bool = False) -> list[str]:
    """Servers by cells: each median with its ratio to the cell's baseline server."""
    lines = ["", f"### {title}", "",
             "| server | " + " | ".join(label(c, ctx) for c in cells) + " |",
             "|---|" + "---:|" * len(cells)]
    for name in names:
        row = []
        for cell in cells:
            fig, ref = figures.get((name, cell.name)), figures.get((cell.baseline, cell.name))
            if fig is None or not fig.runs:
                row.append("n/a" if fig is None else "skipped" if fig.skipped else "failed")
                continue
            mine, base = value(fig), value(ref) if ref and ref.runs else None
            if mine is None:
                row.append("-")
                continue
            r = ratio(mine, base) if base is not None else None
            mark = " ⚠" if mark_problems and (fig.errors or fig.note) else ""
            row.append(f"{fmt(mine)} ({fmt_ratio(r)}){mark}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def targets(figures: dict[tuple[str, str], Figure], plan: Plan, ctx: Context) -> list[str]:
    """The issue's targets, checked against this run's medians.

    Requests/s is this server over its peer (above 1 is better); CPU per
    request is this server over its peer (below 1 is better, and steadier
    than requests/s on a busy machine).
    """
    rows: list[str] = []

    def get(server: str, cell: str) -> Figure | None:
        fig = figures.get((server, cell))
        return fig if fig is not None and fig.runs else None

    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    for mine, peer, cells, rps_goal, cpu_goal in TARGETS:
        for cell in cells:
            fig, other = get(mine, cell), get(peer, cell)
            if not (fig and other and other.rps):
                continue
            r = fig.rps / other.rps
            cpu = (fig.cpu_us / other.cpu_us if fig.has_cpu and other.has_cpu
                   and fig.cpu_us and other.cpu_us else None)
            goal = f"≥ {rps_goal:.2f}× {peer}" + (f", CPU ≤ {cpu_goal:.2f}×" if cpu_goal else "")
            cpu_met = "" if cpu_goal is None else "-" if cpu is None else verdict(cpu <= cpu_goal)
            rows.append(f"| {mine} {cell} {goal} | {r:.2f} | "
                        f"{'-' if cpu is None else f'{cpu:.2f}'} | {verdict(r >= rps_goal)} "
                        f"| {cpu_met} |")
    hold = get("tcpkit-async", "hold")
    if hold:
        ok = hold.growth_kb <= HOLD_TARGET_KB and all(
            f == str(ctx.hold) for pair in hold.held.split(", ") for f in pair.split("/"))
        rows.append(f"| tcpkit-async hold: all {ctx.hold} served, ≤ {HOLD_TARGET_KB:g} KB/conn "
                    f"| {hold.held}; {hold.growth_kb:.2f} KB | | {verdict(ok)} | |")
    for mine, peer, cell in RSS_TARGETS:
        fig, other = get(mine, cell), get(peer, cell)
        if fig and other:
            rows.append(f"| {mine} {cell} peak RSS below {peer}'s | {fig.rss_mb:.0f} vs "
                        f"{other.rss_mb:.0f} MB | | {verdict(fig.rss_mb < other.rss_mb)} | |")
    lines = []
    if rows:
        lines = ["", "### Targets (medians of this run)", "",
                 "| target | req/s (deliveries/s) ratio | CPU per request ratio | met (req/s) "
                 "| met (CPU) |",
                 "|---|---:|---:|---|---|", *rows]
    return lines + a_b(figures, plan)


def a_b(figures: dict[tuple[str, str], Figure], plan: Plan) -> list[str]:
    """Each ``SERVER`` against ``SERVER@REV`` (``--baseline``): this tree over that one.

    CPU per request is the figure to read for a change (steadier than
    requests/s on a shared machine); above 1.00 the change costs more.
    """
    rows = []
    for server in plan.servers:
        base, sep, _ = server.name.partition("@")
        if not sep:
            continue
        for cell in plan.cells:
            new, old = figures.get((base, cell.name)), figures.get((server.name, cell.name))
            if not (new and old and new.runs and old.runs) or cell.hold:
                continue
            cpu = (f"{new.cpu_us:.2f} / {old.cpu_us:.2f} = **{new.cpu_us / old.cpu_us:.3f}**"
                   if new.has_cpu and old.has_cpu and old.cpu_us else "-")
            rows.append(f"| {base} | {cell.name} | {new.rps / old.rps:.3f} | {cpu} |")
    if not rows:
        return []
    return ["", "### A/B against the baseline revision (this tree / baseline, medians)", "",
            "| server | cell | req/s ratio | CPU µs per request, this / baseline |",
            "|---|---|---:|---:|", *rows]


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO))
    return str(path)


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated section of ``path``; keep everything written by hand."""
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nGenerated by `python bench/run.py` between the markers below; "
        "the rest of this file is written by hand.\n\n" + MARK_BEGIN + "\n" + MARK_END + "\n")
    if MARK_BEGIN not in text:
        text += "\n" + MARK_BEGIN + "\n" + MARK_END + "\n"
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1) if MARK_END in rest else ("", "\n")
    path.write_text(head + MARK_BEGIN + "\n" + section + MARK_END + tail)


def write_plot(path: Path, plan: Plan, ctx: Context) -> bool:
    """A panel per timed cell (requests per second, ratio to C epoll) and one for
    the hold cell's RSS growth per connection; two panels a row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        progress("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return False
    figures = summarize(plan.records)
    names = [s.name for s in plan.servers]
    panels: list[tuple[str, Cell, Callable[[Figure], float], str]] = [
        (label(c, ctx) if c.unit == "request" else
         f"{label(c, ctx)}: {plural(c.unit)} per second (ratio to {c.baseline})", c,
         lambda f: f.rps, "{:,.0f}") for c in plan.cells if not c.hold]
    panels += [(f"{label(c, ctx)}: RSS growth, KB per connection (lower is better)", c,
                lambda f: f.growth_kb, "{:.2f}") for c in plan.cells if c.hold]
    if not panels:
        return False
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, rows * (0.8 + 0.24 * len(names))),
                             squeeze=False)
    for ax, (title, cell, value, fmt) in zip(axes.flat, panels, strict=False):
        ref = figures.get((cell.baseline, cell.name))
        here = [n for n in names if (n, cell.name) in figures]  # servers that speak it
        values = [value(figures[(n, cell.name)]) if figures[(n, cell.name)].runs else 0.0
                  for n in here]
        colours = ["#444444" if n == cell.baseline else "#1f77b4" if n.startswith("tcpkit")
                   else "#aaaaaa" for n in here]
        bars = ax.barh(here, values, color=colours)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10, loc="left")
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 10
                                                   else f"{x:g}"))
        top = max(values) if any(values) else 1.0
        ax.set_xlim(0, top * 1.3)
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if not v else fmt.format(v)
            base = value(ref) if ref and ref.runs else 0.0
            if v and base:
                text += f" ({v / base:.2f})"
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, text,
                    va="center", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("tcpkit vs C epoll and peers: requests per second (ratio to C epoll), server "
                 f"on CPU 0 (tcpkit-async-w2: CPUs 0-1, shared with the load generator); "
                 f"medians of {plan.repeat}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def pick(items: Sequence[Any], names: str | None, kind: str,
         default: Callable[[Any], bool]) -> list[Any]:
    if not names:
        return [item for item in items if default(item)]
    if names == "all":
        return list(items)
    by_name = {item.name: item for item in items}
    unknown = [n for n in names.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown {kind}: {', '.join(unknown)} "
                         f"(known: {', '.join(by_name)})")
    return [by_name[n] for n in names.split(",")]


def baseline_servers(servers: Sequence[Server], rev: str, build_dir: Path) -> list[Server]:
    """The tcpkit servers among ``servers`` again, run from the source tree of ``rev``.

    The tree is exported with ``git archive`` (no checkout is touched) and put
    first on PYTHONPATH, so the installed dependencies and interpreter are the
    same for both sides: only tcpkit's own code differs.
    """
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = (build_dir / f"baseline-{sha}").resolve()
    if not (tree / "src" / "tcpkit").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    clones = []
    for server in servers:
        if not server.name.startswith("tcpkit-"):
            continue
        clones.append(dataclasses.replace(
            server, name=f"{server.name}@{rev}", argv=_from_tree(server.argv, tree / "src")))
    return clones


def _from_tree(argv: Callable[[Context, int, str], list[str]],
               src: Path) -> Callable[[Context, int, str], list[str]]:
    def run(ctx: Context, port: int, service: str) -> list[str]:
        # ctx.tcpkit is the console script (or python -c ...): swap it for the
        # interpreter running tcpkit from ``src``.
        rest = argv(ctx, port, service)[len(ctx.tcpkit):]
        return ["env", f"PYTHONPATH={src}", ctx.python, "-m", "tcpkit", *rest]
    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tcpkit in every mode against C epoll and the usual peers.")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per timed cell (default 2.5, a full run in about "
                             "16 minutes; --quick: 1)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions of every cell (default 3; --quick: 1)")
    parser.add_argument("--servers", help="comma-separated server names, or 'all' (default: "
                        "all but twisted, trio, gevent) — "
                        + ", ".join(s.name for s in SERVERS))
    parser.add_argument("--cells", help="comma-separated cell names, or 'all' "
                        f"(default all) — {', '.join(c.name for c in CELLS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: 1 s per cell, 1 repetition, hold 1000")
    parser.add_argument("--hold", type=int, default=None,
                        help="connections in the hold cell (default 10000; --quick: 1000)")
    parser.add_argument("--idle", type=float, default=2.0, help="hold cell's idle seconds")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "bench",
                        help="the shared bench directory (loadgen.c, anchors/)")
    parser.add_argument("--build", type=Path, default=HERE / "build",
                        help="where the C programs are built (default bench/build)")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md",
                        help="report whose generated section is replaced")
    parser.add_argument("--plot", type=Path, default=HERE / "benchmarks.png")
    parser.add_argument("--raw", type=Path, default=None,
                        help="JSON-lines output (default bench/results/run-STAMP.jsonl)")
    parser.add_argument("--report", type=Path, metavar="RAW",
                        help="measure nothing: rebuild the report and plot from a raw file")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run every selected tcpkit server from git revision REV "
                             "(named SERVER@REV), interleaved in the same run: an A/B of a change")
    parser.add_argument("--note", action="append", default=[],
                        help="a line to add to the report (e.g. machine conditions)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (1.0 if quick else 2.5)
    args.repeat = args.repeat or (1 if quick else 3)
    args.hold = args.hold or (1000 if quick else 10_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report_again(args)
    command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    servers = pick(SERVERS, args.servers, "server", lambda s: not s.optional)
    if args.baseline:
        servers += baseline_servers(servers, args.baseline, args.build)
    cells = pick(CELLS, args.cells, "cell", lambda c: True)
    shared = args.shared.resolve()
    if not (shared / "loadgen.c").exists():
        raise SystemExit(f"no loadgen.c in {shared} (give --shared)")
    build(shared, args.build)
    tcpkit_bin = Path(sys.executable).parent / "tcpkit"
    ctx = Context(shared=shared, build=args.build, python=sys.executable,
                  tcpkit=[str(tcpkit_bin)] if tcpkit_bin.exists() else
                  [sys.executable, "-c", "from tcpkit.cli import main; main()"],
                  seconds=args.seconds, idle=args.idle, hold=args.hold)
    usable = []
    for server in servers:
        reason = available(server)
        if reason:
            progress(f"skipping {server.name}: {reason}")
        else:
            usable.append(server)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = args.raw or HERE / "results" / f"run-{stamp.replace(':', '')}.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    logs = args.build / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    info = machine()
    # The driver (and the RSS sampler) share CPU 1 with the load generator,
    # never the server's CPU 0.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOADGEN_CPUS)})
    plan = Plan(usable, cells, args.repeat)
    meta = {"command": command, "stamp": stamp, "machine": info, "seconds": args.seconds,
            "repeat": args.repeat, "hold": args.hold, "idle": args.idle, "notes": args.note,
            "servers": [s.name for s in usable], "cells": [c.name for c in cells]}
    with open(raw, "a") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
    started = time.monotonic()
    progress(f"{len(usable)} servers x {len(cells)} cells x {args.repeat} repetitions, "
             f"{args.seconds:g} s per cell, about {estimate(plan, ctx) / 60:.0f} min; "
             f"raw results in {raw}")
    try:
        measure(ctx, plan, raw, logs, stamp)
    except KeyboardInterrupt:
        progress("interrupted: reporting what was measured")
    minutes = (time.monotonic() - started) / 60
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["notes"] = [f"Took {minutes:.1f} minutes; load average at the end {load}.", *args.note]
    with open(raw, "a") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
    write_reports(args, plan, ctx, meta, raw)
    progress(f"done in {minutes:.1f} min: {args.markdown}, {raw}")
    return 0


def write_reports(args: argparse.Namespace, plan: Plan, ctx: Context, meta: dict[str, Any],
                  raw: Path) -> None:
    plot = args.plot if write_plot(args.plot, plan, ctx) else None
    write_markdown(args.markdown, markdown(plan, ctx, meta["machine"], meta["command"],
                                           meta["stamp"], plot, raw, meta["notes"]))


def report_again(args: argparse.Namespace) -> int:
    """Rebuild BENCHMARKS.md's section and the plot from a raw file (--report)."""
    meta: dict[str, Any] = {}
    records = []
    for line in args.report.read_text().splitlines():
        entry = json.loads(line)
        if "meta" in entry:
            meta = entry["meta"]  # the last one wins: it has the run's duration
        else:
            records.append(entry)
    if not meta:
        raise SystemExit(f"{args.report}: no meta line (not written by bench/run.py?)")
    by_name = {s.name: s for s in SERVERS}
    servers = [dataclasses.replace(by_name[n.partition("@")[0]], name=n)
               for n in meta["servers"] if n.partition("@")[0] in by_name]
    cells = [c for c in CELLS if c.name in meta["cells"]]
    ctx = Context(shared=args.shared, build=args.build, python=sys.executable, tcpkit=[],
                  seconds=meta["seconds"], idle=meta["idle"], hold=meta["hold"])
    write_reports(args, Plan(servers, cells, meta["repeat"], records), ctx, meta, args.report)
    progress(f"rewrote {args.markdown} and {args.plot} from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
