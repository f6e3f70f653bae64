"""The in-process pub/sub hub: rooms, counters and names for one server process.

Every session of a server gets the same hub as ``self.hub``.  This one keeps
everything in this process's memory, which is why a ``shared_state`` service
cannot be served by several processes with it (``--mode fork``, ``--workers``).
Its methods are ``async`` so that a networked backend (Redis) can have the very
same API; here none of them waits, and a lock makes them safe from every
thread and every private event loop the blocking modes run hooks on.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcpkit.session import Session


class LocalHub:
    """Rooms of sessions, counters and a name registry, in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rooms: dict[str, dict[Session, None]] = {}  # insertion-ordered sets
        self._counters: dict[str, int] = {}
        self._names: dict[str, Session] = {}

    async def join(self, room: str, session: Session) -> None:
        with self._lock:
            self._rooms.setdefault(room, {})[session] = None

    async def leave(self, room: str, session: Session) -> None:
        with self._lock:
            members = self._rooms.get(room)
            if members is not None:
                members.pop(session, None)
                if not members:
                    del self._rooms[room]

    async def publish(self, room: str, message: bytes, sender: Session | None = None) -> None:
        """Send ``message`` to every member of ``room`` but ``sender``."""
        with self._lock:
            members = list(self._rooms.get(room, ()))
        for member in members:
            if member is not sender:
                member.send(message)

    async def next_id(self, name: str) -> int:
        with self._lock:
            value = self._counters.get(name, 0) + 1
            self._counters[name] = value
            return value

    async def claim(self, name: str, session: Session) -> bool:
        with self._lock:
            return self._names.setdefault(name, session) is session

    async def release(self, name: str, session: Session) -> None:
        with self._lock:
            if self._names.get(name) is session:
                del self._names[name]
