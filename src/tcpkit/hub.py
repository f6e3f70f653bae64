"""Rooms for sessions: publish/subscribe, a unique counter and a name registry.

A chat room needs three things that a single session cannot keep: the other
members (to broadcast to), a counter that never gives two clients the same
``guestN``, and a registry that gives a nickname to one client only.  A
:class:`Hub` offers exactly these, with one API whatever is behind it:

* :class:`LocalHub` (the default) keeps them in this process: right for the
  async mode and the thread mode, where every session lives in one process.
* :class:`RedisHub` (``--pubsub redis://HOST:PORT``) keeps them in Redis —
  pub/sub for the rooms, ``INCR`` for the counter, ``SET NX`` for names — so a
  room spans ``--workers N``, ``--mode fork`` children and several servers
  behind one load balancer.

Members are anything with a thread-safe ``send(*lines)`` (a Session); one that
also has ``line_sink()`` (a Session does) is sent each message through the
function it returns, the cheapest way into its connection's queue.  The
methods are coroutines so that a session's ``async def`` hook awaits them the
same way for both backends.  Delivery to local members is immediate and
excludes the sender; a RedisHub also publishes each message with its
process's origin tag, and ignores its own when they come back, so a member
never hears itself and each sender's messages arrive in the order sent.

Redis going away is survived: every local member is told so in one line, the
hub reconnects with exponential backoff (at most :data:`MAX_BACKOFF` seconds
between tries), claims its names again (a Redis restarted empty forgot them),
tells the members once it is back, and meanwhile local members still hear
each other.  Calls that need Redis (``next_id``, ``claim``)
raise :class:`HubUnavailable` until then.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from tcpkit.errors import Error
from tcpkit.loop_thread import start_loop_thread

log = logging.getLogger("tcpkit")
MAX_BACKOFF = 5.0  # seconds between reconnection attempts, at most
NAME_TTL = 60  # seconds a claimed name lives in Redis unless its server refreshes it
REFRESH_EVERY = 20.0  # seconds between refreshes of this process's claimed names
FIRST_CONNECT = 2.0  # seconds the first use waits for the subscription
LOST = b"* message relay lost; reconnecting (only members on this server hear you)"
RESTORED = b"* message relay restored"


class Member(Protocol):
    """A room member: a session, or anything that takes lines from any thread."""

    def send(self, *lines: bytes | str) -> None: ...


class HubUnavailable(Error, ConnectionError):
    """The hub's backend (Redis) cannot be reached right now."""


def line_sink(member: Member) -> Callable[[bytes], None]:
    """How the hub sends ``member`` one line: its ``line_sink()`` if it has one (a
    Session does: one call per delivery instead of send()'s argument handling), else
    its ``send``."""
    sink = getattr(member, "line_sink", None)
    return sink() if sink is not None else member.send


class Hub:
    """Rooms of members in this process; the backends add what crosses processes."""

    def __init__(self) -> None:
        # room -> id(member) -> (member, its line sink)
        self._rooms: dict[str, dict[int, tuple[Member, Callable[[bytes], None]]]] = {}
        # room -> its members as a tuple, made by the first publish after a join or a
        # leave: a publish then copies nothing under the lock
        self._delivery: dict[str, tuple[tuple[Member, Callable[[bytes], None]], ...]] = {}
        self._lock = threading.Lock()  # sessions of thread mode call from many threads

    async def join(self, room: str, member: Member) -> None:
        """Add ``member`` to ``room`` (created on first join)."""
        entry = (member, line_sink(member))
        with self._lock:
            self._rooms.setdefault(room, {})[id(member)] = entry
            self._delivery.pop(room, None)

    async def leave(self, room: str, member: Member) -> None:
        """Remove ``member`` from ``room``; a no-op if it is not there."""
        with self._lock:
            members = self._rooms.get(room)
            if members is not None:
                members.pop(id(member), None)
                self._delivery.pop(room, None)
                if not members:
                    del self._rooms[room]

    async def publish(self, room: str, message: bytes, sender: Member | None = None) -> None:
        """Deliver ``message`` to every member of ``room`` but ``sender``."""
        self._deliver(room, message, sender)

    async def next_id(self, name: str) -> int:
        """The next number of counter ``name`` (1, 2, ...), unique wherever the hub reaches."""
        raise NotImplementedError

    async def claim(self, name: str, member: Member) -> bool:
        """Give ``name`` to ``member`` unless someone else holds it; True if it is theirs."""
        raise NotImplementedError

    async def release(self, name: str, member: Member) -> None:
        """Give ``name`` up, if ``member`` holds it."""
        raise NotImplementedError

    def members(self, room: str) -> int:
        """Members of ``room`` in this process."""
        with self._lock:
            return len(self._rooms.get(room, ()))

    def close(self) -> None:
        """Release what the backend holds (connections, threads)."""

    def _deliver(self, room: str, message: bytes, sender: Member | None) -> None:
        # The fan-out's hot loop: one call per member, outside the lock (a member's
        # send may take locks of its own, or even publish).
        with self._lock:
            entries = self._delivery.get(room)
            if entries is None:
                members = self._rooms.get(room)
                if members is None:
                    return  # nobody there (and no tuple kept for a room that does not exist)
                entries = self._delivery[room] = tuple(members.values())
        for member, sink in entries:
            if member is not sender:
                sink(message)

    def _tell_everyone(self, line: bytes) -> None:
        with self._lock:
            everyone = {id(m): m for room in self._rooms.values() for m, _ in room.values()}
        for member in everyone.values():
            member.send(line)


class LocalHub(Hub):
    """Rooms, counters and names of this process only (the default)."""

    def __init__(self) -> None:
        super().__init__()
        self._counters: dict[str, itertools.count[int]] = {}
        self._names: dict[str, int] = {}  # name -> id() of its holder

    async def next_id(self, name: str) -> int:
        with self._lock:
            counter = self._counters.setdefault(name, itertools.count(1))
            return next(counter)

    async def claim(self, name: str, member: Member) -> bool:
        with self._lock:
            return self._names.setdefault(name, id(member)) == id(member)

    async def release(self, name: str, member: Member) -> None:
        with self._lock:
            if self._names.get(name) == id(member):
                del self._names[name]


# Deletes a key only if it still holds our token: a name that expired and was
# claimed by another server meanwhile is not taken away from its new holder.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
_REFRESH = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('expire', KEYS[1], ARGV[2]) end")


class RedisHub(Hub):
    """Rooms, counters and names shared through Redis by every process that uses ``url``.

    The Redis client runs on an event loop of the hub's own, in a background
    thread, so that sessions on any loop or thread (async mode, thread mode's
    threads, fork mode's children) can await the hub.  The thread starts on
    first use in each process: nothing crosses a ``fork``.
    """

    def __init__(self, url: str, namespace: str = "tcpkit") -> None:
        super().__init__()
        self.url = url
        self.prefix = f"{namespace}:"
        self.origin = uuid.uuid4().hex.encode()  # this process's tag on what it publishes
        self.connected = threading.Event()  # the subscription is live
        self._names: dict[str, str] = {}  # name -> token, for the names this process holds
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._start_lock = threading.Lock()
        self._down = False

    # -- the API ------------------------------------------------------------------

    async def publish(self, room: str, message: bytes, sender: Member | None = None) -> None:
        self._deliver(room, message, sender)
        channel = self.prefix + "room:" + room
        # If Redis is away, local members heard it and the others were told so.
        with contextlib.suppress(HubUnavailable):
            await self._call(self._redis_call("publish", channel, self.origin + b" " + message))

    async def next_id(self, name: str) -> int:
        number: int = await self._call(self._redis_call("incr", self.prefix + "id:" + name))
        return number

    async def claim(self, name: str, member: Member) -> bool:
        token = f"{self.origin.decode()}:{id(member)}"
        key = self.prefix + "name:" + name
        taken = await self._call(self._redis_call("set", key, token, nx=True, ex=NAME_TTL))
        if taken:
            self._names[name] = token
            return True
        holder = await self._call(self._redis_call("get", key))
        return bool(holder == token.encode())

    async def release(self, name: str, member: Member) -> None:
        token = self._names.get(name)
        if token is None or token != f"{self.origin.decode()}:{id(member)}":
            return
        del self._names[name]
        with contextlib.suppress(HubUnavailable):
            await self._call(self._redis_call("eval", _RELEASE, 1, self.prefix + "name:" + name,
                                              token))

    def close(self) -> None:
        with self._start_lock:
            loop, self._loop = self._loop, None
            self._pid = -1
        if loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(5.0)
        loop.call_soon_threadsafe(loop.stop)

    # -- the background loop ------------------------------------------------------

    def start(self) -> asyncio.AbstractEventLoop:
        """Start this process's Redis client and subscription (idempotent)."""
        with self._start_lock:
            if self._loop is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self.connected.clear()
                loop = asyncio.new_event_loop()
                start_loop_thread(loop, "tcpkit-hub")
                asyncio.run_coroutine_threadsafe(self._begin(), loop).result(10.0)
                self._loop = loop
                # Messages published before the subscription is live would be
                # missed: give it a moment (a Redis that is down is retried later).
                self.connected.wait(FIRST_CONNECT)
            return self._loop

    async def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        loop = self.start()
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(future)

    async def _redis_call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if self._down:
            raise HubUnavailable("message relay unavailable")
        try:
            return await getattr(self._redis, command)(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise HubUnavailable(f"message relay unavailable: {exc}") from None

    async def _begin(self) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2.0,
                                                   socket_timeout=5.0)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._refresh())]

    async def _shutdown(self) -> None:
        # Every task of the hub's loop: the listener, the refresher, and calls still
        # waiting for Redis (whose callers are told they were cancelled).
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for name, token in list(self._names.items()):
            with contextlib.suppress(Exception):
                await self._redis.eval(_RELEASE, 1, self.prefix + "name:" + name, token)
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def _listen(self) -> None:
        """Receive every room's messages; survive Redis restarting."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self.prefix + "room:*")
                if self._down:
                    await self._reclaim()
                self._restored()
                delay = 0.1
                async for message in pubsub.listen():
                    self._received(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the connection: retry, never crash
                self._lost(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _received(self, message: dict[str, Any]) -> None:
        if message.get("type") != "pmessage":
            return
        channel, data = message["channel"], message["data"]
        origin, _, text = data.partition(b" ")
        if origin != self.origin:
            room = channel.decode()[len(self.prefix + "room:"):]
            self._deliver(room, text, None)

    def _lost(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            self.connected.clear()
            log.warning("message relay %s lost (%s); reconnecting", self.url, exc,
                        extra={"event": "pubsub-lost"})
            self._tell_everyone(LOST)

    def _restored(self) -> None:
        self.connected.set()
        if self._down:
            self._down = False
            log.info("message relay %s restored", self.url, extra={"event": "pubsub-restored"})
            self._tell_everyone(RESTORED)

    async def _reclaim(self) -> None:
        """Back from an outage: claim this process's names again, before anyone else may
        (claims fail until :meth:`_restored`).  A Redis that restarted empty has
        forgotten them, and its counter starts again at 1: without this, a new
        guest could be given the name of a member still connected."""
        for name, token in list(self._names.items()):
            await self._redis.set(self.prefix + "name:" + name, token, nx=True, ex=NAME_TTL)

    async def _refresh(self) -> None:
        """Keep this process's names alive; a crashed server's names expire by themselves."""
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            for name, token in list(self._names.items()):
                with contextlib.suppress(Exception):
                    await self._redis.eval(_REFRESH, 1, self.prefix + "name:" + name, token,
                                           NAME_TTL)


def check_pubsub(url: str | None) -> None:
    """Raise ValueError for a ``--pubsub`` value no hub understands."""
    if url in (None, "", "local"):
        return
    assert url is not None
    if not url.startswith("redis://") or len(url) <= len("redis://"):
        raise ValueError(f"--pubsub must be 'local' or redis://HOST:PORT (got {url!r})")
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        raise ValueError("--pubsub redis:// needs the redis extra: pip install 'tcpkit[redis]'")


class Hubs:
    """The hubs of one server process: one per session service, made on first use.

    Each service gets its own namespace (``tcpkit:SERVICE``), so two services
    served together never share a room, a counter or a name, while every
    process and server serving one service with the same ``--pubsub`` URL
    shares its hub's state.  Thread-safe (thread mode's connections ask for it).
    """

    def __init__(self, url: str | None = None) -> None:
        check_pubsub(url)
        self.url = url
        self._hubs: dict[str, Hub] = {}
        self._lock = threading.Lock()

    def get(self, service: str) -> Hub:
        """The hub of ``service`` in this process."""
        with self._lock:
            hub = self._hubs.get(service)
            if hub is None:
                hub = self._hubs[service] = make_hub(self.url, f"tcpkit:{service}")
            return hub

    def close(self) -> None:
        """Close every hub made so far."""
        with self._lock:
            hubs, self._hubs = list(self._hubs.values()), {}
        for hub in hubs:
            hub.close()


def make_hub(url: str | None = None, namespace: str = "tcpkit") -> Hub:
    """The hub ``--pubsub`` names: in this process by default, or Redis at ``url``."""
    check_pubsub(url)
    if url in (None, "", "local"):
        return LocalHub()
    assert url is not None
    return RedisHub(url, namespace)
