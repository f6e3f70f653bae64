"""The chat example with ``--pubsub redis://``: one room across ``--workers 4``, across
``--mode fork``'s children and across two servers behind a real HAProxy, with a real
redis-server started by each test — and Redis restarting survived.

Which process serves a member is read from /proc (the worker holding the socket), so
the tests know their members really are in different processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from helpers.examples import install_examples
from helpers.haproxy import localized, start_haproxy, stop_haproxy
from helpers.net import LinePeer, free_ports
from helpers.processes import descendants
from helpers.redis import RedisServer
from helpers.servers import Server, Servers, needs, script
from tcpkit.hub import LOST, RESTORED

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs /proc")
UNAVAILABLE = b"error: chat unavailable, try again later"


class Start(Protocol):
    def __call__(self, *args: str) -> Server: ...


@pytest.fixture(scope="module")
def chat_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return install_examples(tmp_path_factory.mktemp("examples"), "chat")


@pytest.fixture
def serve_chat(chat_env: dict[str, str], redis_server: RedisServer) -> Iterator[Start]:
    """``tcpkit serve chat --pubsub <the test's redis> ARGS``; stopped after the test."""
    servers = Servers(env=chat_env)

    def start(*args: str) -> Server:
        listen = [] if "--listen" in args else ["--listen", "127.0.0.1:0"]
        return servers.command([*script("tcpkit"), "serve", "chat", *listen,
                                "--pubsub", redis_server.url, *args])

    yield start
    servers.stop_all()


def join(port: int) -> tuple[LinePeer, bytes]:
    member = LinePeer(port)
    welcome = member.line()
    assert re.fullmatch(rb"welcome guest\d+", welcome), welcome
    return member, welcome.removeprefix(b"welcome ")


def serving_pid(server: Server, member: LinePeer) -> int:
    """The process (of the server's tree) holding the server side of ``member``'s socket."""
    client_port = member.sock.getsockname()[1]
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == server.port and remote_port == client_port:
            inode = fields[9]
    assert inode, "no server side for this member"
    for pid in [server.pid, *descendants(server.pid)]:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    raise AssertionError("no process holds the member's socket")


def members_in_several_processes(server: Server, want: int = 2,
                                 at_most: int = 24) -> list[tuple[LinePeer, bytes]]:
    """Members joined until they are served by ``want`` different processes."""
    members: list[tuple[LinePeer, bytes]] = []
    pids: set[int] = set()
    while len(pids) < want:
        assert len(members) < at_most, f"{at_most} members all in {pids}"
        member = join(server.port)
        members.append(member)
        pids.add(serving_pid(server, member[0]))
    return members


def chat_in_order(members: list[tuple[LinePeer, bytes]], lines: int = 20) -> None:
    """Everyone says ``lines`` lines; everyone else hears each sender's, in order."""
    for member, name in members:
        member.send(*[b"%s says %d" % (name, n) for n in range(lines)])
    names = {name for _, name in members}
    for member, own in members:
        heard: dict[bytes, list[bytes]] = {name: [] for name in names - {own}}
        while any(len(said) < lines for said in heard.values()):
            line = member.line()
            if line.startswith(b"* "):
                continue  # someone joined
            sender, _, text = line.partition(b": ")
            assert sender in heard, line  # never one's own line
            heard[sender].append(text)
        for sender, said in heard.items():
            assert said == [b"%s says %d" % (sender, n) for n in range(lines)]


def close_all(members: list[tuple[LinePeer, bytes]]) -> None:
    for member, _ in members:
        member.close()


@pytest.mark.parametrize("split", [["--workers", "4"], ["--mode", "fork"]])
def test_one_room_across_processes(split: list[str], serve_chat: Start) -> None:
    server = serve_chat(*split)
    members = members_in_several_processes(server)
    members += [join(server.port) for _ in range(2)]
    names = [name for _, name in members]
    assert len(set(names)) == len(names), names  # guestN unique across processes
    chat_in_order(members)
    first, _ = members[0]
    last, _ = members[-1]
    first.send(b"NICK ann")
    assert first.line() == b"you are now ann"
    last.send(b"NICK ann")  # held by a member in another process
    assert last.line() == b"error: nickname taken"
    first.send(b"QUIT")
    assert first.line() == b"bye"
    assert first.rest() == b""
    assert last.line() == b"* ann left"
    last.send(b"NICK ann")  # released when ann left
    assert last.line() == b"you are now ann"
    close_all(members)
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


@needs("haproxy")
def test_one_room_across_two_servers_behind_haproxy(serve_chat: Start,
                                                    tmp_path: Path) -> None:
    chat_one, chat_two, metrics_one, metrics_two, front = free_ports(5)
    one = serve_chat("--listen", f"127.0.0.1:{chat_one}", "--metrics", f"127.0.0.1:{metrics_one}")
    two = serve_chat("--listen", f"127.0.0.1:{chat_two}", "--workers", "2",
                     "--metrics", f"127.0.0.1:{metrics_two}")
    config = localized("chat.cfg", {17815: chat_one, 17816: chat_two}, {7815: front},
                       check_ports={19815: metrics_one, 19816: metrics_two})
    proxy = start_haproxy(config, tmp_path)
    members: list[tuple[LinePeer, bytes]] = []
    try:
        members = [join_when_up(front)]
        while not (accepted(one) and accepted(two)):  # leastconn: the next goes to the other
            assert len(members) < 8, "haproxy sent every member to one server"
            members.append(join_when_up(front))
        chat_in_order(members)
        (ann, _), (bob, _) = members[0], members[-1]
        ann.send(b"NICK ann")
        assert ann.line() == b"you are now ann"
        bob.send(b"NICK ann", b"hello ann")
        assert bob.line() == b"error: nickname taken"
        assert ann.line().endswith(b": hello ann")
    finally:
        close_all(members)
        output = stop_haproxy(proxy)
    assert "[ALERT]" not in output, output
    for server in (one, two):
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("bad", ["bogus", "redis://", "http://127.0.0.1:6379"])
def test_a_bad_pubsub_is_a_usage_error(bad: str, chat_env: dict[str, str]) -> None:
    done = subprocess.run([*script("tcpkit"), "serve", "chat", "--listen", "127.0.0.1:0",
                           "--workers", "2", "--pubsub", bad],
                          env={**os.environ, **chat_env}, capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done
    assert done.stderr.decode().splitlines() == [
        f"tcpkit serve: error: --pubsub must be 'local' or redis://HOST:PORT (got {bad!r})"]


def accepted(server: Server) -> bool:
    return re.search(r"accept 127\.0\.0\.1:\d+ \(chat\)", server.stderr()) is not None


def join_when_up(port: int) -> tuple[LinePeer, bytes]:
    """Join through HAProxy, once its checks found a server up (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            member = LinePeer(port)
            welcome = member.line()
            assert welcome.startswith(b"welcome guest"), welcome
            return member, welcome.removeprefix(b"welcome ")
        except (ConnectionError, AssertionError):
            assert time.monotonic() < deadline, "haproxy did not serve"
            time.sleep(0.1)


def test_redis_restarting_is_survived(serve_chat: Start, redis_server: RedisServer) -> None:
    """Redis stops: members are told, members of one server still hear each other, a
    newcomer is told to come back later; Redis returns (empty): members are told, no name
    is given twice, the room spans both servers again.  Nothing crashes."""
    one, two = serve_chat(), serve_chat()
    ann, ann_name = join(one.port)
    bob, bob_name = join(two.port)
    dan, dan_name = join(one.port)
    assert [ann.line(), ann.line()] == [b"* " + bob_name + b" joined",
                                        b"* " + dan_name + b" joined"]
    assert bob.line() == b"* " + dan_name + b" joined"
    redis_server.stop()
    assert ann.line() == dan.line() == bob.line() == LOST
    ann.send(b"only this server", b"NICK ann")
    assert dan.line() == ann_name + b": only this server"
    assert ann.line() == UNAVAILABLE  # no name can be claimed without Redis; ann keeps hers
    dan.send(b"QUIT")  # leaving works: dan's own server hears it at once, Redis or not
    assert dan.line() == b"bye"
    assert ann.line() == b"* " + dan_name + b" left"
    late = LinePeer(one.port)
    assert late.line() == UNAVAILABLE
    assert late.rest() == b""  # and closed
    late.close()
    redis_server.start()  # the same port, no data: the servers reconnect with backoff
    assert ann.line() == bob.line() == RESTORED  # bob never got the local lines
    carl, carl_name = join(one.port)
    assert carl_name not in (ann_name, bob_name)  # the counter restarted, their names did not
    assert bob.line() == b"* " + carl_name + b" joined"
    ann.send(b"across again")
    assert bob.line() == ann_name + b": across again"
    assert carl.line() == ann_name + b": across again"
    for member in (ann, bob, carl, dan):
        member.close()
    for server in (one, two):
        assert server.stop() == 0
        assert "Traceback" not in server.stderr()
    one.wait_for_stderr("message relay .* lost")
    one.wait_for_stderr("message relay .* restored")
