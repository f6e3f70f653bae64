"""The reliability suite's long form: every scenario at full size, figures to RELIABILITY.md.

    python bench/reliability.py                      # full sizes (the issue's), ~30 min
    python bench/reliability.py --reduced            # CI sizes, a few minutes
    python bench/reliability.py --only slowloris --modes thread

Each scenario of ``tests/helpers/hostile.py`` runs against a fresh ``tcpkit serve`` on
loopback in every serving mode it applies to; then the soak (``bench/soak.py``)
and the fuzzers (``fuzz/run.py``).  The table it writes says, per scenario and
mode, the load held, what was injected, what was lost, the peak memory of the
server with its children (PSS), and whether the spec's promise held.  Exits 1
if any did not.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import hostile, hostile_proxy  # noqa: E402
from helpers.numbers import long_semiprime  # noqa: E402
from helpers.servers import Server, script, start_server  # noqa: E402
from tcpkit.serving.run import MODES  # noqa: E402

CONCURRENT = [m for m in MODES if m != "iterative"]


@dataclass(frozen=True)
class Sizes:
    slowloris: int
    never_reading: tuple[int, int]  # clients, MB each
    flood: tuple[int, int]  # held, extra
    fd_flood: int
    resets: int
    half_close: int
    haproxy: tuple[int, float]  # clients, seconds
    soak_minutes: float
    fuzz_minutes: float
    proxy_floods: int = 2000  # connections of each flood: bad PROXY headers, denied clients


FULL = Sizes(2000, (100, 20), (100, 1000), 2000, 1000, 200, (8, 30.0), 10.0, 10.0)
REDUCED = Sizes(200, (10, 16), (20, 30), 400, 60, 20, (4, 3.0), 2.5, 1.0, 200)


@dataclass
class Row:
    outcome: hostile.Outcome
    ok: bool
    command: str


def serve(mode: str, *args: str, services: tuple[str, ...] = ("reverse",),
          fd_limit: int | None = None) -> Server:
    listen = [f"--listen={name}=127.0.0.1:0" for name in services]
    command = [*script("tcpkit"), "serve", *services, "--mode", mode, *listen, *args]
    if fd_limit is not None:
        command = ["sh", "-c", f'ulimit -n {fd_limit} && exec "$@"', "sh", *command]
    return start_server(command, services=len(services))


def with_server(server: Server, run: Callable[[Server], hostile.Outcome]) -> hostile.Outcome:
    try:
        return run(server)
    finally:
        server.stop()


def scenarios(sizes: Sizes, workdir: Path) -> dict[str, tuple[list[str], Callable[[str], Row]]]:
    """name -> (modes it applies to, run(mode) -> Row)."""

    def row(outcome: hostile.Outcome, ok: bool, name: str) -> Row:
        return Row(outcome, ok, f"python bench/reliability.py --only {name} "
                                f"--modes {outcome.mode}")

    def slowloris(mode: str) -> Row:
        server = serve(mode, "--idle-timeout", "2", "--max-connections",
                       str(sizes.slowloris + 100))
        out = with_server(server, lambda s: hostile.slowloris(s, sizes.slowloris, 2, mode))
        d = out.details
        return row(out, out.lost == 0 and d["freed_silent"] == d["silent"]
                   and d["freed_trickling"] == d["trickling"], "slowloris")

    def never_reading(mode: str) -> Row:
        clients, megabytes = sizes.never_reading
        out = with_server(serve(mode), lambda s: hostile.never_reading(s, clients, megabytes,
                                                                      mode))
        bound = (5 if mode == "fork" else 2) * clients + 16
        out.details["bound_mb"] = bound
        return row(out, out.lost == 0 and out.details["growth_kb"] < bound * 1024,  # type: ignore[operator]
                   "never-reading")

    def flood(mode: str) -> Row:
        held, extra = sizes.flood
        out = with_server(serve(mode, "--max-connections", str(held)),
                          lambda s: hostile.connection_flood(s, held, extra, mode))
        extras = out.details["extras"]
        assert isinstance(extras, dict)
        return row(out, out.lost == 0 and set(extras) <= {"busy", "refused", "reset"}, "flood")

    def fd_flood(mode: str) -> Row:
        out = with_server(serve(mode, fd_limit=256),
                          lambda s: hostile.fd_exhaustion(s, sizes.fd_flood, mode))
        return row(out, out.lost == 0 and out.details["alive"] is True, "fd-flood")

    def resets(mode: str) -> Row:
        out = with_server(serve(mode), lambda s: hostile.resets(s, sizes.resets, mode))
        return row(out, out.lost == 0, "resets")

    def half_close(mode: str) -> Row:
        out = with_server(serve(mode), lambda s: hostile.half_close(s, sizes.half_close, mode))
        return row(out, out.lost == 0, "half-close")

    def abandoned(mode: str) -> Row:
        server = serve(mode, "--time-limit", "120", "--factor-workers", "1",
                       services=("factor",))
        out = with_server(server, lambda s: hostile.abandoned_factorization(
            s, long_semiprime(), mode))
        return row(out, out.lost == 0 and out.details["stopped"] is True, "abandoned-factor")

    def sigterm(mode: str) -> Row:
        server = serve(mode, "--drain-timeout", "20")
        out = hostile.sigterm_under_load(server, 1 if mode == "iterative" else 8, mode)
        d = out.details
        return row(out, out.lost == 0 and d["exit"] == 0 and d["wrong"] == 0
                   and d["tracebacks"] == 0, "sigterm")

    def haproxy(mode: str) -> Row:
        clients, seconds = sizes.haproxy

        def instance(ports: dict[str, int]) -> Server:
            listen = [f"--listen={name}=127.0.0.1:{port}" for name, port in ports.items()]
            return start_server([*script("tcpkit"), "serve", "--mode", mode, *listen],
                                services=2)

        out = hostile.behind_haproxy(instance, workdir, clients, seconds, mode)
        d = out.details
        return row(out, out.lost <= clients and d["failed_outside_kill_window"] == 0
                   and bool(d["marked_down"]) and bool(d["marked_up_again"])
                   and d["sessions_to_restarted"] > 0, "haproxy")  # type: ignore[operator]

    def worker_kill(mode: str) -> Row:
        clients, seconds = sizes.haproxy
        server = serve(mode, "--workers", "2")
        out = with_server(server, lambda s: hostile.worker_killed(s, clients, seconds, mode))
        d = out.details
        return row(out, out.lost <= clients and d["failed_outside_window"] == 0
                   and bool(d["replaced"]) and d["workers_alive"] == 2, "worker-kill")

    def bad_proxy(mode: str) -> Row:
        server = serve(mode, "--proxy-protocol", "127.0.0.1")
        out = with_server(server, lambda s: hostile_proxy.bad_proxy_headers(
            s, sizes.proxy_floods, mode))
        flood = out.details["flood"]
        assert isinstance(flood, dict)
        return row(out, out.lost == 0 and set(flood) <= {"closed", "reset"}, "bad-proxy")

    def denied(mode: str) -> Row:
        server = serve(mode, "--deny", "127.0.0.2")
        out = with_server(server, lambda s: hostile_proxy.denied_flood(
            s, sizes.proxy_floods, mode))
        flood = out.details["flood"]
        assert isinstance(flood, dict)
        return row(out, out.lost == 0 and set(flood) <= {"denied"}, "denied-flood")

    every = list(MODES)
    return {
        "slowloris": (CONCURRENT, slowloris),
        "never-reading": (CONCURRENT, never_reading),
        "flood": (CONCURRENT, flood),
        "fd-flood": (CONCURRENT, fd_flood),
        "resets": (every, resets),
        "half-close": (every, half_close),
        "abandoned-factor": (every, abandoned),
        "sigterm": (every, sigterm),
        "haproxy": (CONCURRENT, haproxy),
        "bad-proxy": (["async", "thread"], bad_proxy),
        "denied-flood": (["async", "thread"], denied),
        "worker-kill": (CONCURRENT if has_workers() else [], worker_kill),
    }


def has_workers() -> bool:
    done = subprocess.run([*script("tcpkit"), "serve", "--help"], capture_output=True,
                          text=True, check=False)
    return "--workers" in done.stdout


def soak_row(minutes: float, workdir: Path) -> Row:
    figures = workdir / "soak.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes",
                           str(minutes), "--json", str(figures)], capture_output=True,
                          text=True, check=False, timeout=minutes * 60 + 300)
    print(done.stdout, end="")
    if not figures.exists():  # the soak itself failed: say how
        failed = hostile.Outcome("soak: mixed load + hostile clients", "async", "-", "-",
                                 lost=-1, details={"error": done.stderr.strip()[-300:]})
        return Row(failed, False, f"python bench/soak.py --minutes {minutes:g}")
    result = json.loads(figures.read_text())
    growth = result["growth_over_run"]
    out = hostile.Outcome(
        "soak: mixed load + hostile clients", "async",
        f"{result['requests']:,} requests in {minutes:g} min",
        ", ".join(f"{n} {k}" for k, n in sorted(result["hostile"].items())),
        lost=result["lost"], peak_pss_kb=int(result["peak"]["pss_kb"]),
        details={"growth_pss_mb": round(growth["pss_kb"] / 1024, 1),
                 "growth_fds": round(growth["fds"], 1), "growth_threads": growth["threads"],
                 "tracebacks": result["tracebacks"], "exit": result["exit"],
                 "quiet_before": result["quiet_before"], "quiet_after": result["quiet_after"]})
    ok = (result["lost"] == 0 and result["tracebacks"] == 0 and result["exit"] == 0
          and all(result["flat"].values())
          and result["quiet_after"]["fds"] <= result["quiet_before"]["fds"])
    return Row(out, ok, f"python bench/soak.py --minutes {minutes:g}")


def fuzz_row(minutes: float) -> Row:
    done = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--minutes",
                           str(minutes)], capture_output=True, text=True, check=False,
                          timeout=minutes * 60 + 600)
    lines = done.stdout.strip().splitlines()
    out = hostile.Outcome("coverage-guided fuzzing (atheris)", "-",
                          "; ".join(lines) or done.stderr.strip()[-200:],
                          "random inputs to framing, reverse, factor, endpoint parser",
                          lost=0 if done.returncode == 0 else 1)
    return Row(out, done.returncode == 0, f"python fuzz/run.py --minutes {minutes:g}")


# -- the report ------------------------------------------------------------------------


def versions() -> str:
    import importlib.metadata as meta

    def version(name: str) -> str:
        try:
            return meta.version(name)
        except meta.PackageNotFoundError:
            return "absent"

    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True,
                             check=False).stdout.split("\n")[0] if _has("haproxy") else "absent"
    packages = ", ".join(f"{name} {version(name)}" for name in
                         ("tcpkit", "uvloop", "python-flint", "regex", "hypothesis", "atheris"))
    return f"Python {platform.python_version()}, {packages}; {haproxy.strip()}"


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import os

    memory = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs "
            f"(shared with other work), {int(memory) // 1024 // 1024} GB RAM")


def commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def render(rows: list[Row], reduced: bool, argv: list[str]) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    form = ("**reduced form** (CI sizes: `--reduced`)" if reduced
            else "full form (the issue's sizes)")
    lines = [
        "# Reliability figures",
        "",
        f"Produced by `python bench/reliability.py {' '.join(argv)}`".rstrip() + f" — {form}.",
        f"Date: {stamp}; commit {commit()}.",
        f"Machine: {machine()}.",
        f"Versions: {versions()}.",
        "",
        "Every scenario runs against a fresh `tcpkit serve` on loopback. *Lost*: replies a",
        "well-behaved client was owed and did not get (must be 0, except behind HAProxy,",
        "where requests in flight on the killed instance may fail: at most one per client).",
        "*Peak memory*: PSS of the server and all its children (fork mode's",
        "copy-on-write pages counted once). *Held*: the spec's promise held.",
        "",
        "| scenario | mode | load held | injected | lost | peak memory | held | details "
        "| command |",
        "| --- | --- | --- | --- | ---: | ---: | --- | --- | --- |",
    ]
    for entry in rows:
        out = entry.outcome
        memory = f"{out.peak_pss_kb / 1024:.0f} MB" if out.peak_pss_kb else "-"
        details = ", ".join(f"{k}={v}" for k, v in out.details.items()).replace("|", "/")
        lines.append(f"| {out.scenario} | {out.mode} | {out.load} | {out.injected} | "
                     f"{out.lost} | {memory} | {'yes' if entry.ok else '**NO**'} | "
                     f"{details} | `{entry.command}` |")
    return "\n".join([*lines, "", NOTES]) + "\n"


NOTES = """\
## How the promises are kept, and their limits

- **Slowloris**: `--idle-timeout` closes silent clients, and a request line
  must be complete within `--idle-timeout` of its first byte (bytes that only
  lengthen an unfinished line do not count as activity), so a client trickling
  a byte a second is closed as well.
- **Never-reading clients**: the server stops reading from a client whose
  unsent replies pass 256 KiB (or whose replies wait behind 1,024 unfinished
  jobs); its further requests stay in the kernel's buffers.
- **Out of file descriptors**: the async, thread and iterative modes size their
  connection cap to the descriptor limit (beyond it: `error: server busy`), and
  every mode pauses accepting on EMFILE/ENFILE should it happen anyway, so
  pending clients wait in the listen backlog and are served as descriptors
  free up: none hangs, none is lost.
- **Closing with replies owed** (drain, line too long): the server sends FIN
  after the replies, then reads and discards what the client still sends
  until its EOF (at most 2 s; after a protocol error, at most 1 MiB), as
  Apache and nginx do: closing a socket with unread input makes the kernel
  send a reset, which destroys replies not yet delivered.
- **Factor workers** ignore SIGINT/SIGTERM (the server drains, then stops
  them) and die with their forkserver, which exits with the server: `kill -9`
  of the server leaves no orphan computing.
- **Iterative mode** serves one client at a time, by design: the hostile
  scenarios that need several clients at once do not apply to it.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="CI sizes, a few minutes")
    parser.add_argument("--only", action="append", metavar="SCENARIO",
                        help="run only these (repeatable): scenario names, soak, fuzz")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--output", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args(argv)
    sizes = REDUCED if args.reduced else FULL
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tcpkit-reliability-") as tmp:
        workdir = Path(tmp)
        for name, (modes, run) in scenarios(sizes, workdir).items():
            if args.only and name not in args.only:
                continue
            for mode in [m for m in args.modes if m in modes]:
                entry = run(mode)
                rows.append(entry)
                print(f"{name:<18} {mode:<10} {'ok' if entry.ok else 'FAILED'} "
                      f"lost={entry.outcome.lost} {entry.outcome.details}", flush=True)
        if not args.only or "soak" in args.only:
            rows.append(soak_row(sizes.soak_minutes, workdir))
            print(f"soak {'ok' if rows[-1].ok else 'FAILED'} {rows[-1].outcome.details}")
        if not args.only or "fuzz" in args.only:
            rows.append(fuzz_row(sizes.fuzz_minutes))
            print(f"fuzz {'ok' if rows[-1].ok else 'FAILED'} {rows[-1].outcome.load}")
    args.output.write_text(render(rows, args.reduced, argv))
    print(f"wrote {args.output}")
    return 0 if all(entry.ok for entry in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
