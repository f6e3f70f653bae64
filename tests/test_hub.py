"""The pub/sub Hub: rooms, counters and names, in-process and through a real redis-server.

Scope: the Hub API itself (tcpkit.hub), without a tcpkit server; sessions that use it are
tested end to end with the examples.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from helpers.redis import RedisServer
from tcpkit.hub import LOST, RESTORED, Hub, Hubs, LocalHub, RedisHub, make_hub


class Member:
    """A room member that keeps what it is sent (from any thread)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.lines: queue.Queue[bytes] = queue.Queue()

    def send(self, *lines: bytes | str) -> None:
        for line in lines:
            self.lines.put(line.encode() if isinstance(line, str) else line)

    def next(self, timeout: float = 10.0) -> bytes:
        return self.lines.get(timeout=timeout)

    def nothing(self) -> bool:
        return self.lines.empty()


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- in this process ---------------------------------------------------------------


def test_local_publish_reaches_every_member_but_the_sender() -> None:
    hub, a, b, c = LocalHub(), Member(), Member(), Member()

    async def scenario() -> None:
        for member in (a, b, c):
            await hub.join("lobby", member)
        await hub.publish("lobby", b"a: hello", sender=a)
        await hub.leave("lobby", c)
        await hub.publish("lobby", b"b: bye", sender=b)

    run(scenario())
    assert b.next() == b"a: hello" and c.next() == b"a: hello"
    assert a.next() == b"b: bye"
    assert a.nothing() and b.nothing() and c.nothing()
    assert hub.members("lobby") == 2


def test_local_rooms_are_separate_and_empty_rooms_are_forgotten() -> None:
    hub, a, b = LocalHub(), Member(), Member()

    async def scenario() -> None:
        await hub.join("one", a)
        await hub.join("two", b)
        await hub.publish("one", b"x")
        await hub.leave("one", a)
        await hub.leave("one", a)  # twice: a no-op

    run(scenario())
    assert a.next() == b"x" and b.nothing()
    assert hub.members("one") == 0 and "one" not in hub._rooms


def test_local_counter_is_unique_across_threads() -> None:
    hub = LocalHub()
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        numbers = [run(hub.next_id("guest")) for _ in range(200)]
        with lock:
            got.extend(numbers)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(1, 801))


def test_local_names_are_exclusive_until_released() -> None:
    hub, a, b = LocalHub(), Member(), Member()

    async def scenario() -> list[bool]:
        held = [await hub.claim("ann", a), await hub.claim("ann", b), await hub.claim("ann", a)]
        await hub.release("ann", b)  # not b's to give up
        held.append(await hub.claim("ann", b))
        await hub.release("ann", a)
        held.append(await hub.claim("ann", b))
        return held

    assert run(scenario()) == [True, False, True, False, True]


def test_make_hub_refuses_what_it_does_not_understand() -> None:
    assert isinstance(make_hub(None), LocalHub) and isinstance(make_hub("local"), LocalHub)
    for bad in ("redis:/", "redis://", "memcached://x:1", "x"):
        with pytest.raises(ValueError, match="--pubsub"):
            make_hub(bad)


# -- through Redis -------------------------------------------------------------------


@pytest.fixture
def two_hubs(redis_server: RedisServer) -> Iterator[tuple[RedisHub, RedisHub]]:
    hubs = (RedisHub(redis_server.url, "t"), RedisHub(redis_server.url, "t"))
    for hub in hubs:
        hub.start()
        assert hub.connected.wait(10)
    try:
        yield hubs
    finally:
        for hub in hubs:
            hub.close()


def test_members_on_two_servers_hear_each_other_in_order(
        two_hubs: tuple[RedisHub, RedisHub]) -> None:
    left, right = two_hubs
    a, b, c = Member("a"), Member("b"), Member("c")

    async def scenario() -> None:
        await left.join("lobby", a)
        await left.join("lobby", b)
        await right.join("lobby", c)
        for n in range(200):
            await left.publish("lobby", b"a: %d" % n, sender=a)
        await right.publish("lobby", b"c: hi", sender=c)

    run(scenario())
    assert [b.next() for _ in range(200)] == [b"a: %d" % n for n in range(200)]
    assert [c.next() for _ in range(200)] == [b"a: %d" % n for n in range(200)]
    assert a.next() == b"c: hi" and b.next() == b"c: hi"
    assert a.nothing() and c.nothing()  # nobody hears themselves, nothing twice


def test_counter_and_names_are_shared_by_every_server(
        two_hubs: tuple[RedisHub, RedisHub]) -> None:
    left, right = two_hubs
    a, b = Member(), Member()

    async def ids(hub: Hub) -> list[int]:
        return [await hub.next_id("guest") for _ in range(50)]

    async def both() -> list[list[int]]:
        return list(await asyncio.gather(ids(left), ids(right)))

    numbers = run(both())
    assert sorted(numbers[0] + numbers[1]) == list(range(1, 101))

    async def names() -> list[bool]:
        first = [await left.claim("ann", a), await right.claim("ann", b)]
        await left.release("ann", a)
        return [*first, await right.claim("ann", b), await left.claim("ann", a)]

    assert run(names()) == [True, False, True, False]


def test_redis_restarting_is_survived(redis_server: RedisServer) -> None:
    hub, other = RedisHub(redis_server.url, "t"), RedisHub(redis_server.url, "t")
    a, b = Member(), Member()
    try:
        for each in (hub, other):
            each.start()
            assert each.connected.wait(10)
        run(hub.join("lobby", a))
        run(other.join("lobby", b))
        redis_server.stop()
        assert a.next() == LOST and b.next() == LOST
        run(hub.publish("lobby", b"x", sender=None))  # no crash while Redis is away
        assert a.next() == b"x"
        with pytest.raises(ConnectionError):
            run(hub.next_id("guest"))
        redis_server.start()  # the same port: the hubs reconnect with backoff
        assert a.next() == RESTORED and b.next() == RESTORED
        run(other.publish("lobby", b"back", sender=b))
        assert a.next() == b"back"
        assert run(hub.next_id("guest")) == 1
    finally:
        hub.close()
        other.close()


def test_names_survive_redis_restarting_empty(redis_server: RedisServer) -> None:
    """A Redis restarted without its data forgot every name: each hub claims its own
    again before it takes new claims, so no two members ever share one."""
    hub, other = RedisHub(redis_server.url, "t"), RedisHub(redis_server.url, "t")
    ann, bob = Member(), Member()
    try:
        for each in (hub, other):
            each.start()
            assert each.connected.wait(10)
        run(hub.join("lobby", ann))
        run(other.join("lobby", bob))
        assert run(hub.claim("guest1", ann))
        redis_server.stop()
        assert ann.next() == LOST and bob.next() == LOST
        redis_server.start()  # empty: no --save, no AOF
        assert ann.next() == RESTORED and bob.next() == RESTORED
        assert not run(other.claim("guest1", bob))
        assert run(hub.claim("guest1", ann))  # still ann's
    finally:
        hub.close()
        other.close()


def test_hubs_give_each_service_its_own_namespace() -> None:
    hubs = Hubs()
    chat, kv = hubs.get("chat"), hubs.get("kv")
    assert hubs.get("chat") is chat and kv is not chat
    member = Member()
    run(chat.join("lobby", member))
    run(kv.publish("lobby", b"other service"))
    run(chat.publish("lobby", b"same service"))
    assert member.next() == b"same service" and member.nothing()
    hubs.close()
    remote = Hubs("redis://127.0.0.1:1").get("chat")
    assert isinstance(remote, RedisHub) and remote.prefix == "tcpkit:chat:"


def test_a_forked_child_gets_a_hub_of_its_own(redis_server: RedisServer) -> None:
    hub, listener = RedisHub(redis_server.url, "t"), RedisHub(redis_server.url, "t")
    member = Member()
    try:
        hub.start()  # the parent's thread and client must not be used by the child
        listener.start()
        assert listener.connected.wait(10)
        run(listener.join("lobby", member))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                run(hub.publish("lobby", b"from the child"))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert member.next() == b"from the child"
    finally:
        hub.close()
        listener.close()


def test_local_publish_uses_a_members_line_sink_and_sees_joins_and_leaves() -> None:
    class Sinking(Member):
        def line_sink(self) -> Any:
            return lambda line: self.lines.put(b"sink " + line)

    hub, plain, sinking, late = LocalHub(), Member(), Sinking(), Member()

    async def scenario() -> None:
        await hub.join("lobby", plain)
        await hub.join("lobby", sinking)
        await hub.publish("lobby", b"one")
        await hub.join("lobby", late)  # a join after a publish is seen by the next one
        await hub.publish("lobby", b"two", sender=plain)
        await hub.leave("lobby", sinking)
        await hub.publish("lobby", b"three")
        await hub.publish("nowhere", b"lost")  # a room nobody joined: nothing, no error

    run(scenario())
    assert [plain.next(), plain.next()] == [b"one", b"three"]
    assert [sinking.next(), sinking.next()] == [b"sink one", b"sink two"]
    assert [late.next(), late.next()] == [b"two", b"three"]
    assert plain.nothing() and sinking.nothing() and late.nothing()
    assert "nowhere" not in hub._delivery
