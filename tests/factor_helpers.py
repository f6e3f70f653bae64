"""Helpers for the factor tests: numbers, CPU watching, abrupt disconnects."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from tcpkit import factorize

HUGE = 2146835378817558231380297107186697853901073308050436695802022092129  # 67 digits, p*q
HUGE2 = 2047263573228486329701800974642617119101827491777211449602342965897
MID = [369088188892207674398867, 159073021591612557400973,  # 24-30 digit semiprimes:
       505950662815779426558664101241, 747797432599629278130896886613]  # offloaded, ms each


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, also those started from its other threads.

    (A process started from a thread is listed in that thread's ``children``
    file only; the pool starts its workers from executor threads.)
    """
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            direct = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for child in direct:
            found += [child, *descendants(child)]
    return found


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used by ``pid`` and its live descendants."""
    total = 0.0
    for proc in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def reply_for(n: int) -> bytes:
    return " ".join(map(str, factorize(n))).encode() + b"\n"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate``; return the seconds it took (fail after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def wait_busy(pid: int, cpu_seconds: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until ``pid`` and its descendants burn ``cpu_seconds`` more CPU (a job runs)."""
    start = process_cpu_seconds(pid)
    wait_until(lambda: process_cpu_seconds(pid) - start >= cpu_seconds, timeout,
               "a worker to start working")


def wait_idle(pid: int, timeout: float = 10.0) -> float:
    """Wait until ``pid`` and its descendants use (almost) no CPU for 0.5 s."""
    start = time.monotonic()
    last = process_cpu_seconds(pid)
    while True:
        time.sleep(0.5)
        now = process_cpu_seconds(pid)
        if now - last < 0.15:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still busy after {timeout} s ({now - last:.2f} s CPU in 0.5 s)")
        last = now


def abort(sock: socket.socket) -> None:
    """Disconnect abruptly (RST), as a crashed or killed client's kernel often does.

    A plain close() sends FIN, which on the wire is the same as the half-close
    with which a client says "that was my last request, send the replies":
    the server has to keep working for it (SPEC §2.2).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])

# In the command line of the local pool's forkserver and of every worker it forks.
FORKSERVER = "multiprocessing.forkserver"


def command_line(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it has exited:
    a zombie's is empty too)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants_running(pid: int, marker: str) -> list[int]:
    """Live descendants of ``pid`` whose command line contains ``marker``: processes
    found by what they are (a forkserver, a Dask task's child), not by CPU use."""
    return [child for child in descendants(pid) if marker in command_line(child)]



def pool_workers(pid: int) -> list[int]:
    """The local pool's workers under ``pid``: forked by its forkserver, so their
    parent is a forkserver too (the forkserver's own parent is the server)."""
    found = descendants_running(pid, FORKSERVER)
    return [child for child in found if parent(child) in found]


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0
