"""Session services for the end-to-end tests (tests/test_sessions_e2e.py).

They are registered through the ``tcpkit.services`` entry points (see
``helpers.servers.plugin_env``), so a real ``tcpkit serve NAME`` process serves them
in every mode, exactly as it would serve an installed plug-in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from tcpkit.service import Blocking, Service
from tcpkit.session import Reply, Session

log = logging.getLogger("tcpkit")


class Greeting(Session):
    """One line on connect, then close (like daytime)."""

    def connected(self) -> Reply:
        self.close()
        return f"hello {self.peer.host}"

    def received(self, message: bytes) -> Reply:
        return "never"


class Counter(Session):
    """Per-connection state, many-line replies, QUIT, slow answers of both kinds."""

    def connected(self) -> Reply:
        self.count = 0
        self.in_flight = self.most = 0  # hook jobs of this session running at once
        self.lock = threading.Lock()
        return "ready"

    def received(self, message: bytes) -> Reply:
        self.count += 1
        word, _, rest = message.partition(b" ")
        if word == b"QUIT":
            self.close()
            return "bye"
        if word == b"many":
            return ["one", "two", "three"]
        if word == b"ping":
            return "pong"
        if word == b"sleep":  # a blocking call, off the event loop
            log.info("counter sleeping")
            return Blocking(_sleep, float(rest or 1))
        if word == b"nap":  # an async def answer, awaited on the loop
            return self._nap(float(rest or 1))
        if word == b"overlap":  # how many of this session's hook jobs ran at once
            return self._overlap()
        if word == b"overlap-blocking":
            return Blocking(self._overlap_blocking)
        return str(self.count)

    async def _nap(self, seconds: float) -> Reply:
        await asyncio.sleep(seconds)
        return "awoke"

    async def _overlap(self) -> Reply:
        self._enter()
        await asyncio.sleep(0.02)  # a window in which another job could start
        return self._leave()

    def _overlap_blocking(self) -> Reply:
        self._enter()
        time.sleep(0.02)
        return self._leave()

    def _enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)

    def _leave(self) -> str:
        with self.lock:
            self.in_flight -= 1
            return f"most {self.most}"

    def disconnected(self, reason: str) -> None:
        log.info("counter session ended: %s", reason)


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


class Room(Session):
    """Every line goes to the other members; ``blast`` sends 64 KiB to them."""

    async def connected(self) -> Reply:
        self.name = f"guest{await self.hub.next_id('room-guest')}"
        await self.hub.join("room", self)
        return f"welcome {self.name}"

    async def received(self, message: bytes) -> Reply:
        if message == b"blast":
            await self.hub.publish("room", b"x" * (64 * 1024), self)
            return "ok"
        await self.hub.publish("room", f"{self.name}: ".encode() + message, self)
        return None

    async def disconnected(self, reason: str) -> None:
        await self.hub.leave("room", self)
        await self.hub.publish("room", f"* {self.name} left ({reason})".encode(), self)
        log.info("room session ended: %s", reason)


GREETING = Service("t-greeting", 0, "greets and closes", session=Greeting)
COUNTER = Service("t-counter", 0, "counts per connection", session=Counter)
ROOM = Service("t-room", 0, "a room", session=Room, shared_state="hub")

ENTRY_POINTS = {
    "t-greeting": "session_services:GREETING",
    "t-counter": "session_services:COUNTER",
    "t-room": "session_services:ROOM",
}
