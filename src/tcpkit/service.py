"""What a service is: a name, a default port, and how it answers a line.

A service author writes pure functions from a request line to a reply line and
never sees a socket.  The serving layer (any mode, any transport, any limit)
calls them.  This is what lets one definition run everywhere:

    from tcpkit import Service

    def shout(line: bytes) -> bytes:
        return line.upper()

    SERVICE = Service("shout", 7802, "upper-cases each line", shout)

An answer is either the reply's bytes (without terminator, which the
connection adds), or an :class:`Offload` — a picklable call that the server
runs off the event loop in a worker process, bounded by the time limit and
cancelled when the client goes away.  Raising :class:`RequestError` makes the
reply ``error: <message>`` and keeps the connection open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any


class RequestError(Exception):
    """A request the service cannot answer; the client gets ``error: <message>``."""


@dataclass(frozen=True, slots=True)
class Offload:
    """Work too heavy for the event loop: ``func(*args)`` runs in a worker process.

    ``func`` must be a module-level function (it is pickled by name) returning
    the reply's bytes, or raising :class:`RequestError`.
    """

    func: Callable[..., bytes]
    args: tuple[Any, ...] = ()


Answer = bytes | Offload
LineHandler = Callable[[bytes], Answer]
BlockHandler = Callable[[bytes], bytes | None]


@dataclass(frozen=True)
class Options:
    """Per-service settings a server passes to :attr:`Service.configure`."""

    max_digits: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Service:
    """A line-oriented service, defined once and served by every mode.

    ``answer`` maps a request line's content (terminator removed) to its reply.
    ``answer_block`` is an optional fast path: given a block of complete
    LF-terminated lines it returns the whole reply block, or ``None`` to fall back
    to ``answer`` line by line (for instance when the block holds CRLF lines).
    ``configure`` returns a copy of the service adjusted to server options.
    ``preload`` names modules the worker processes running its Offload work
    import before their first job (heavy imports, warmed-up libraries), so a
    fresh worker answers at once; a server's workers preload what all its
    services declare, and a service with no Offload work needs none.
    """

    name: str
    port: int
    description: str
    answer: LineHandler
    answer_block: BlockHandler | None = None
    configure: Callable[[Service, Options], Service] | None = None
    preload: tuple[str, ...] = ()

    def configured(self, options: Options) -> Service:
        """This service as the server's options ask for it."""
        if self.configure is None:
            return self
        return self.configure(self, options)

    def with_answer(self, answer: LineHandler) -> Service:
        """A copy that answers with ``answer`` (used by ``configure`` hooks)."""
        return replace(self, answer=answer)
