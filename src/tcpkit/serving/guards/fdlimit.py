"""File descriptors: raise the limit at start, and keep room below it.

Every client costs a server one descriptor, so ``RLIMIT_NOFILE`` caps the
connections it can hold.  Distributions start processes with a low soft
limit (often 1024) under a high hard one; like nginx's
``worker_rlimit_nofile``, :func:`raise_nofile` lifts the soft limit to the
hard one before serving.

Running out anyway must not hurt.  The blocking modes see EMFILE from
``accept`` and pause (see :mod:`tcpkit.serving.modes.accepting`) — but the clients
waiting in the backlog meanwhile get no answer at all, so the thread and
iterative modes, whose clients each hold a descriptor in the server, also
refuse past :func:`connection_budget`.  The async mode must: libuv answers
EMFILE by accepting and closing every waiting client with a reserve
descriptor (they get a reset, nothing is logged), and on any other accept
error — or when that reserve is gone — uvloop closes the listening socket
for good.  So the async mode refuses new clients with
``error: server busy`` while they would take it within :func:`headroom` of the
limit (:func:`connection_budget`), which keeps ``accept`` itself from failing.
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("tcpkit")


def raise_nofile() -> int:
    """Lift the soft descriptor limit to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the descriptor limit to %d: %s", target, exc)
    return soft


def nofile() -> int:
    """The soft descriptor limit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fds_in_use() -> int:
    """Descriptors this process has open now (an estimate off Linux)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:
        return 16


def headroom(limit: int) -> int:
    """Descriptors kept free for what is not a client: the worker pool's pipes,
    log files, a refused client's socket while it reads its ``error:`` line."""
    return max(16, limit // 32)


def connection_budget(limit: int | None = None, in_use: int | None = None) -> int:
    """How many clients fit below the descriptor limit, keeping the headroom free."""
    limit = nofile() if limit is None else limit
    in_use = fds_in_use() if in_use is None else in_use
    return max(1, limit - in_use - headroom(limit))
