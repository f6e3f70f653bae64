"""Processes seen through /proc: who they are, what state they are in, waiting on them.

Tests find a process by *what it is* -- its parent, its command line -- and
never by sampling CPU use: while the multiprocessing forkserver is still
importing the factor engine it uses more CPU than anything else in a server's
tree, and a test that took "the descendant using most CPU" for the factor
worker watched the forkserver (which never dies) instead.  CPU time is read only to tell whether
a process already identified is working (:func:`wait_working`).

/proc/PID/stat is parsed here and nowhere else (:func:`stat`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FORKSERVER = "multiprocessing.forkserver"  # in the pool's forkserver's (and its children's) cmdline
DASK_CHILD = "tcpkit.serving.offload.dask --child"  # a Dask task's factoring child
ASLEEP = frozenset("SI")  # waiting (on a pipe, a socket, a timer): not using the CPU
TICK = os.sysconf("SC_CLK_TCK")


# -- one process --------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat the tests use."""

    state: str  # R running, S sleeping, Z zombie, ...
    ppid: int
    cpu_seconds: float  # user + system time of the process itself


def stat(pid: int) -> Stat | None:
    """``pid``'s /proc/PID/stat, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    fields = text.rsplit(")", 1)[1].split()
    return Stat(state=fields[0], ppid=int(fields[1]),
                cpu_seconds=(int(fields[11]) + int(fields[12])) / TICK)


def alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie waiting to be reaped."""
    found = stat(pid)
    return found is not None and found.state != "Z"


def asleep(pid: int) -> bool:
    """Gone, or waiting for something (not on or queued for a CPU)."""
    found = stat(pid)
    return found is None or found.state in ASLEEP or found.state == "Z"


def cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` itself has used (0 once it is gone)."""
    found = stat(pid)
    return found.cpu_seconds if found else 0.0


def cmdline(pid: int) -> str:
    """``pid``'s command line, arguments joined by spaces ("" once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def rss_kb(pid: int) -> int:
    return _status_field(pid, "VmRSS:")


def threads(pid: int) -> int:
    return _status_field(pid, "Threads:")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: RSS with each shared page split among its sharers.

    Summed over a server and its forked children it counts copy-on-write pages
    once, where summed RSS would count the parent's image once per child.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return rss_kb(pid)


def open_fds(pid: int) -> int:
    """File descriptors a process has open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# -- a process tree -----------------------------------------------------------------


def children(pid: int) -> list[int]:
    """``pid``'s live children, also those started from its other threads.

    (A process started from a thread is listed in that thread's ``children``
    file only; the factor pool starts its forkserver from an executor thread.)
    """
    found: list[int] = []
    try:  # the process may be gone between two reads of /proc
        listings = list(Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:
        return found
    for listing in listings:
        with contextlib.suppress(OSError):
            found.extend(int(child) for child in listing.read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid``."""
    found: list[int] = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def tree_total(pid: int, measure: Callable[[int], int]) -> int:
    """``measure`` summed over a process and all its live descendants."""
    total = 0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += measure(member)
    return total


def zombies(pid: int) -> list[int]:
    """Descendants of ``pid`` that have exited but were never reaped."""
    return [child for child in descendants(pid) if (found := stat(child)) and found.state == "Z"]


# -- the factor workers, by what they are -------------------------------------------


def forkservers(pid: int) -> list[int]:
    """The factor pools' forkservers under ``pid`` (one per pool; fork mode has one
    per client child): processes running multiprocessing's forkserver whose parent
    does not (their children, forked without exec, show the same command line)."""
    tree = descendants(pid)
    return [each for each in tree if FORKSERVER in cmdline(each)
            and FORKSERVER not in cmdline(_parent(each))]


def _parent(pid: int) -> int:
    found = stat(pid)
    return found.ppid if found else 0


def factor_workers(pid: int) -> list[int]:
    """The live factor worker processes under server ``pid``: its forkservers' children."""
    return [worker for server in forkservers(pid) for worker in children(server)
            if alive(worker)]


def dask_children(pid: int) -> list[int]:
    """The Dask tasks' factoring child processes under ``pid`` (e.g. this test's
    LocalCluster), by their command line."""
    return [each for each in descendants(pid) if DASK_CHILD in cmdline(each) and alive(each)]


# -- waiting ------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Poll ``condition()`` until true or ``timeout`` passes (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def wait_working(find: Callable[[], list[int]], cpu: float = 0.1,
                 timeout: float = 30.0) -> int:
    """Wait until a job runs on one of the processes ``find()`` names; return its PID.

    ``find`` identifies the candidates by what they are (e.g. :func:`factor_workers`);
    the job's is the one candidate awake (idle workers sleep on their pipe), once it
    has worked ``cpu`` seconds of CPU since it was first seen -- CPU time only
    confirms that the process already singled out is computing.  While several are
    awake (a worker being started, or in fork mode a finished client's child still
    stopping its pool) it waits on.  Give the server one worker
    (``--factor-workers 1``) so that no other job can be running.
    """
    first_seen: dict[int, float] = {}
    awake: list[int] = []

    def working() -> bool:
        nonlocal awake
        awake = [each for each in find() if not asleep(each)]
        if len(awake) != 1:
            return False
        used = cpu_seconds(awake[0])
        return used - first_seen.setdefault(awake[0], used) >= cpu

    if not wait_for(working, timeout):
        raise AssertionError(f"no job started within {timeout} s (awake: {awake} of {find()})")
    return awake[0]


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    """Wait until ``pid`` has exited (a zombie counts as exited)."""
    return wait_for(lambda: not alive(pid), timeout)


def wait_asleep(find: Callable[[], list[int]], timeout: float = 15.0) -> bool:
    """Wait until every process ``find()`` names is asleep (none is computing)."""
    return wait_for(lambda: all(asleep(each) for each in find()), timeout)


def kill_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` (processes this test started) that is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
