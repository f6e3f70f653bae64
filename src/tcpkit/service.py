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

A service may instead keep state per connection: ``session=`` names a
:class:`tcpkit.session.Session` subclass, one object per connection (see
that module).  ``framer=`` frames its messages (default: lines), ``errors=``
writes tcpkit's own error replies in the service's syntax, and
``shared_state`` says its connections share state: ``True`` when that state
lives in the process (a dict: it can never be split across processes), ``"hub"``
when it lives in the server's :class:`~tcpkit.hub.Hub` (rooms, counters, names:
split across processes only with a shared hub, ``--pubsub redis://``).  A stateless
``answer`` may also be an ``async def`` function or return a
:class:`Blocking` call: such a service (and one with ``framer=`` or
``errors=``) is served by the session engine, one ``answer`` call per message.
The plain stateless path (a sync ``answer``, lines, default errors) is the
hot path and is kept apart from all this.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tcpkit.framers import Framer
    from tcpkit.session import Session

from tcpkit.errors import Error

log = logging.getLogger("tcpkit")

class RequestError(Error):
    """A request the service cannot answer; the client gets ``error: <message>``."""


@dataclass(frozen=True, slots=True)
class Offload:
    """Work too heavy for the event loop: ``func(*args)`` runs in a worker process.

    ``func`` must be a module-level function (it is pickled by name) returning
    the reply's bytes, or raising :class:`RequestError`.
    """

    func: Callable[..., bytes]
    args: tuple[Any, ...] = ()


class Blocking:
    """A blocking call (a database driver, a sleep): ``func(*args)`` runs in a thread,
    off the event loop; its return value is the reply (anything a hook may return).

    Unlike :class:`Offload` nothing is pickled: ``func`` may be a closure or a
    bound method and share the process's objects.  Bounded by ``--time-limit``
    (past it the client gets one error reply; the thread itself cannot be
    stopped and finishes in the background).
    """

    __slots__ = ("args", "func")

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        if not callable(func):
            raise TypeError(f"Blocking needs a callable, not {type(func).__name__}")
        self.func = func
        self.args = args

    def __call__(self) -> Any:
        return self.func(*self.args)

    def __repr__(self) -> str:
        return f"Blocking({getattr(self.func, '__qualname__', self.func)!r}, ...)"


def default_errors(kind: str, message: str) -> bytes:
    """tcpkit's own error replies: ``error: <message>`` (kind: "request", "line too long",
    "malformed", "internal", "time limit", "worker crashed", ...; "refused" for a
    client turned away before it is served: "server busy", "access denied",
    "too many connections from ...", "connection rate exceeded")."""
    return b"error: " + message.encode("utf-8", "replace")


Answer = bytes | Offload
LineHandler = Callable[[bytes], Answer]
BlockHandler = Callable[[bytes], bytes | None]


@dataclass(frozen=True)
class Options:
    """Per-service settings a server passes to :attr:`Service.configure`."""

    max_digits: int = 1000


@dataclass(frozen=True)
class Service:
    """A line-oriented service, defined once and served by every mode.

    ``answer`` maps a request line's content (terminator removed) to its reply.
    ``answer_block`` is an optional fast path: given a block of complete
    LF-terminated lines it returns the whole reply block, or ``None`` to fall back
    to ``answer`` line by line (for instance when the block holds CRLF lines).
    ``configure`` returns a copy of the service adjusted to server options.
    ``session``, ``framer``, ``errors`` and ``shared_state``: see the module
    docstring.  An invalid definition is refused here, when it is built
    (TypeError or ValueError), not when the first client connects.
    ``preload`` names modules the worker processes running its Offload work
    import before their first job (heavy imports, warmed-up libraries), so a
    fresh worker answers at once; a server's workers preload what all its
    services declare, and a service with no Offload work needs none.
    """

    name: str
    port: int
    description: str
    answer: LineHandler | None = None
    answer_block: BlockHandler | None = None
    configure: Callable[[Service, Options], Service] | None = None
    _: KW_ONLY
    session: type[Session] | None = None
    framer: Framer | None = None
    errors: Callable[[str, str], bytes] | None = None
    shared_state: bool | Literal["hub"] = False
    options: Options = field(default_factory=Options, compare=False)
    preload: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from tcpkit.framers import Framer
        from tcpkit.session import Session

        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a service needs a name")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"service {self.name!r}: port must be 0-65535, not {self.port!r}")
        if (self.answer is None) == (self.session is None):
            raise TypeError(f"service {self.name!r}: give exactly one of answer= "
                            f"(stateless) or session= (a Session subclass)")
        if self.answer is not None and not callable(self.answer):
            raise TypeError(f"service {self.name!r}: answer must be callable")
        if self.session is not None and not (isinstance(self.session, type)
                                             and issubclass(self.session, Session)):
            raise TypeError(f"service {self.name!r}: session must be a Session subclass, "
                            f"not {self.session!r}")
        if self.session is not None and self.session.received is Session.received:
            raise TypeError(f"service {self.name!r}: {self.session.__name__} must define "
                            f"received()")
        if self.session is not None and self.answer_block is not None:
            raise TypeError(f"service {self.name!r}: answer_block is for stateless services")
        for name in ("answer_block", "configure", "errors"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"service {self.name!r}: {name} must be callable")
        if self.framer is not None and not isinstance(self.framer, Framer):
            raise TypeError(f"service {self.name!r}: framer must be a tcpkit.framers "
                            f"Framer (Lines(), Netstrings(), Int32Prefixed())")
        if self.shared_state not in (False, True, "hub"):
            raise ValueError(f"service {self.name!r}: shared_state must be False, True (state "
                             f"in the process) or 'hub' (state in the pub/sub hub)")
        if isinstance(self.preload, str) or not all(isinstance(m, str) for m in self.preload):
            raise TypeError(f"service {self.name!r}: preload must be a tuple of module names")

    @cached_property  # asked for every connection; inspect's check is not free
    def uses_sessions(self) -> bool:
        """Served by the session engine (not the stateless fast path); see the module doc."""
        return (self.session is not None or self.framer is not None
                or self.errors is not None or inspect.iscoroutinefunction(self.answer))

    @property
    def own_error_syntax(self) -> bool:
        """Whether tcpkit's errors are written in this service's syntax (``errors=`` or
        ``framer=``) rather than as ``error: ...`` lines."""
        return self.errors is not None or self.framer is not None

    def error_text(self, kind: str, message: str) -> bytes:
        """tcpkit's error ``message`` of ``kind`` in this service's words (``errors=``);
        tcpkit's own if the hook fails or returns no bytes (logged: a bug in it)."""
        if self.errors is None:
            return default_errors(kind, message)
        try:
            text = self.errors(kind, message)
            if isinstance(text, bytes):
                return text
            log.error("%s: errors= returned %s, not bytes", self.name, type(text).__name__)
        except Exception:
            log.exception("%s: errors= failed", self.name)
        return default_errors(kind, message)

    def error_reply(self, kind: str, message: str) -> bytes:
        """:meth:`error_text` framed for the wire as a message that answers no request
        (a line ends with the framer's newline): e.g. a refusal at the gate."""
        from tcpkit.framers import Lines

        return (self.framer or Lines()).encode(self.error_text(kind, message))

    def configured(self, options: Options) -> Service:
        """This service as the server's options ask for it."""
        service = self if self.options == options else replace(self, options=options)
        if service.configure is None:
            return service
        return service.configure(service, options)

    def with_answer(self, answer: LineHandler) -> Service:
        """A copy that answers with ``answer`` (used by ``configure`` hooks)."""
        return replace(self, answer=answer)
