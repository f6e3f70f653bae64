"""An event loop in a background thread, for callers that are not on one.

The blocking modes' offload bridge and the Redis hub both run asyncio code
(a worker pool, a Redis client) on behalf of threads, forked children and
other event loops; each owns one such loop, started here, and hands it
coroutines with ``asyncio.run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading


def start_loop_thread(loop: asyncio.AbstractEventLoop, name: str) -> threading.Thread:
    """Run ``loop`` forever in a daemon thread called ``name``; return once it runs.

    The loop closes when it stops (``loop.call_soon_threadsafe(loop.stop)``).
    """
    ready = threading.Event()
    thread = threading.Thread(target=_run, args=(loop, ready), name=name, daemon=True)
    thread.start()
    ready.wait()
    return thread


def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        loop.close()
