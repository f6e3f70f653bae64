"""A kernel-enforced backstop for factor workers whose server has died.

The pool stops a job that passes ``--time-limit`` by killing its worker, which
needs a live server.  If the server is SIGKILLed or OOM-killed, its workers
(children of the forkserver, not of the server) would go on factoring, for
hours if the number is big.  So before each job the pool gives the worker a
CPU-time limit a little beyond the time limit: the kernel then ends a job that
nobody is left to stop.  A live pool always stops the job first, because a
single-threaded worker's CPU time never runs ahead of wall-clock time.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

GRACE = 2.0  # seconds of CPU past the time limit before the kernel steps in


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def limit_cpu(pid: int, seconds: float) -> None:
    """Let ``pid`` use about ``seconds`` more CPU; past that the kernel kills it (SIGXCPU)."""
    try:
        budget = math.ceil(cpu_seconds(pid) + seconds + GRACE)
        _, hard = resource.prlimit(pid, resource.RLIMIT_CPU)
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core
        resource.prlimit(pid, resource.RLIMIT_CPU, (budget, hard))
    except (OSError, ValueError, AttributeError):
        pass  # no /proc or prlimit (not Linux): the pool's own time limit still applies
