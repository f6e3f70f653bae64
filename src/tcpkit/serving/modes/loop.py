"""The event loop the async mode runs on: uvloop where installed, and its error handler."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("tcpkit")


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Unexpected errors in callbacks: one log line (traceback only at debug level)."""
    exc = context.get("exception")
    log.error("%s: %r", context.get("message", "unexpected error"), exc)
    if exc is not None:
        log.debug("details", exc_info=exc)


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
