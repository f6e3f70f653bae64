"""Sessions end to end: real ``tcpkit serve`` processes, real loopback sockets, every mode.

The services are tests/helpers/session_services.py, registered as a plug-in through the
``tcpkit.services`` entry points (``helpers.servers.plugin_env``).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import session_services
from helpers.metrics import metrics_port, settled, value
from helpers.net import LinePeer, connect, recv_until_closed
from helpers.processes import rss_kb, tree_total
from helpers.servers import Server, Servers, run, script, start_inetd

MODES = ["async", "thread", "fork", "iterative"]
CONCURRENT = ["async", "thread", "fork"]  # iterative serves one client at a time
SHARED = ["async", "thread"]  # one process: in-process shared state works
Start = Callable[..., Server]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from helpers.servers import plugin_env

    return plugin_env(tmp_path_factory.mktemp("plugin"), Path(session_services.__file__),
                      session_services.ENTRY_POINTS)


@pytest.fixture
def serve(plugin: dict[str, str]) -> Iterator[Start]:
    servers = Servers(env=plugin)
    yield servers.in_mode
    servers.stop_all()


@pytest.mark.parametrize("mode", MODES)
def test_greeting_then_close(mode: str, serve: Start) -> None:
    server = serve("t-greeting", mode)
    with connect(server.port) as sock:
        assert recv_until_closed(sock) == b"hello 127.0.0.1\n"
    server.wait_for_stderr(r"close 127\.0\.0\.1:\d+ \(0 lines")
    assert server.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_state_is_per_connection_many_lines_and_quit(mode: str, serve: Start) -> None:
    server = serve("t-counter", mode)
    first = LinePeer(server.port)
    assert first.line() == b"ready"
    first.send(b"a", b"b", b"many")
    assert [first.line() for _ in range(5)] == [b"1", b"2", b"one", b"two", b"three"]
    first.send(b"QUIT", b"ignored")
    assert first.line() == b"bye"
    assert first.rest() == b""  # closed after its reply; the line after QUIT is ignored
    first.close()
    second = LinePeer(server.port)
    assert second.line() == b"ready"
    second.send(b"x")
    assert second.line() == b"1"  # a fresh session: nothing leaked from the first
    second.close()
    server.wait_for_stderr("counter session ended: closed")
    server.wait_for_stderr("counter session ended: (eof|reset)")
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("word", [b"overlap", b"overlap-blocking"])
def test_a_sessions_hooks_take_turns(mode: str, word: bytes, serve: Start) -> None:
    """Five pipelined lines whose answers are async def (or Blocking) calls, each
    holding a 20 ms window open: none ran while another of the session's was
    running, and a sync hook's line between them keeps its place."""
    server = serve("t-counter", mode)
    peer = LinePeer(server.port)
    assert peer.line() == b"ready"
    peer.send(word, word, b"x", word, word, word)
    assert [peer.line() for _ in range(6)] == [b"most 1", b"most 1", b"3", *[b"most 1"] * 3]
    peer.close()
    assert server.stop() == 0


@pytest.mark.parametrize("mode", CONCURRENT)
@pytest.mark.parametrize("slow", [b"sleep", b"nap"])
def test_a_slow_answer_does_not_hold_up_other_clients(mode: str, slow: bytes,
                                                      serve: Start) -> None:
    """A Blocking call (``sleep``) or an async def answer (``nap``) takes 1 s; another
    client is answered meanwhile: its reply arrives first."""
    server = serve("t-counter", mode)
    sleeper, other = LinePeer(server.port), LinePeer(server.port)
    assert sleeper.line() == other.line() == b"ready"
    sleeper.send(slow, b"after")
    other.send(b"ping")
    readable, _, _ = select.select([sleeper.sock, other.sock], [], [], 30)
    assert readable == [other.sock], "the other client waited for the slow answer"
    assert other.line() == b"pong"
    assert sleeper.line() == (b"slept" if slow == b"sleep" else b"awoke")
    assert sleeper.line() == b"2"  # in order, after the slow one
    sleeper.close()
    other.close()
    assert server.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_time_limit_bounds_an_awaitable(mode: str, serve: Start) -> None:
    server = serve("t-counter", mode, "--time-limit", "1")
    client = LinePeer(server.port)
    assert client.line() == b"ready"
    client.send(b"nap 60", b"ping")
    assert client.line() == b"error: time limit exceeded (1 s)"
    assert client.line() == b"pong"  # the connection stays open
    client.close()
    assert server.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_every_kind_of_answer_counts_alike_in_the_metrics(mode: str, serve: Start) -> None:
    """A plain answer, an async def answer, and an async def and a Blocking call past
    --time-limit: one request each, its reply and its latency, a time-limit failure's
    kind, the same in every mode (the blocking modes run an awaitable to its end while
    the line that asked for it is being handled)."""
    server = serve("t-counter", mode, "--metrics", "127.0.0.1:0", "--time-limit", "1")
    port = metrics_port(server)
    client = LinePeer(server.port)
    assert client.line() == b"ready"
    # sleep 5: far past the limit, yet short (async mode's stop waits for the thread).
    asked = [b"ping", b"nap 0", b"nap 30", b"sleep 5"]
    client.send(*asked)
    late = b"error: time limit exceeded (1 s)"
    replies = [client.line() for _ in asked]
    assert replies == [b"pong", b"awoke", late, late]
    client.close()
    server.wait_for_stderr(r"close 127\.0\.0\.1:\d+")
    labels = {"service": "t-counter", "mode": mode}
    got = settled(port, labels)
    assert value(got, "tcpkit_lines_total", **labels) == 4
    assert value(got, "tcpkit_replies_total", **labels) == 4
    assert value(got, "tcpkit_received_bytes_total", **labels) == sum(
        len(line) + 1 for line in asked)
    assert value(got, "tcpkit_sent_bytes_total", **labels) == sum(
        len(line) + 1 for line in replies)  # the answers (connected()'s line is not one)
    assert value(got, "tcpkit_request_duration_seconds_count", **labels) == 4
    assert value(got, "tcpkit_request_duration_seconds_sum", **labels) >= 1.9  # two limits
    assert value(got, "tcpkit_errors_total", kind="time_limit", **labels) == 2
    assert value(got, "tcpkit_errors_total", kind="request", **labels) == 0
    assert server.stop() == 0


@pytest.mark.parametrize("mode", SHARED)
def test_unsolicited_lines_from_another_connection(mode: str, serve: Start) -> None:
    server = serve("t-room", mode)
    alice, bob = LinePeer(server.port), LinePeer(server.port)
    assert alice.line().startswith(b"welcome guest")
    name = bob.line().removeprefix(b"welcome ")
    bob.send(b"hi all")
    assert alice.line() == name + b": hi all"
    bob.close()
    assert alice.line() == b"* " + name + b" left (eof)"
    alice.close()
    assert server.stop() == 0


def test_shared_state_refuses_fork_and_workers(plugin: dict[str, str]) -> None:
    env = {**os.environ, **plugin}
    for args in (["--mode", "fork"], ["--workers", "2"]):
        done = subprocess.run([*script("tcpkit"), "serve", "t-room", "--listen", "127.0.0.1:0",
                               *args], env=env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "--pubsub redis://" in lines[0], lines


@pytest.mark.parametrize("mode", SHARED)
def test_a_member_that_never_reads_is_dropped_past_the_cap(mode: str, serve: Start) -> None:
    server = serve("t-room", mode)
    deaf = socket.socket()
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little kernel buffering
    deaf.connect(("127.0.0.1", server.port))
    talker = LinePeer(server.port)
    assert talker.line().startswith(b"welcome")
    before = tree_total(server.pid, rss_kb)
    line = b""
    for _ in range(20):  # up to 2,000 blasts: 125 MiB to the deaf member, who reads nothing
        talker.send(*[b"blast"] * 100)
        replies = [talker.line() for _ in range(100)]
        dropped = [reply for reply in replies if reply.startswith(b"* ")]
        if dropped:
            line = dropped[0]
            break
    assert line.endswith(b" left (send buffer full)"), "the deaf member was never dropped"
    grown = tree_total(server.pid, rss_kb) - before
    assert grown < 48 * 1024, f"server memory grew by {grown} kB"
    server.wait_for_stderr(r"dropped 127\.0\.0\.1:\d+ \(t-room\): send buffer full")
    talker.send(b"blast")  # the others are still served
    assert talker.line() == b"ok"
    deaf.close()
    talker.close()
    assert server.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_drain_on_sigterm_answers_then_runs_disconnected(mode: str, serve: Start) -> None:
    server = serve("t-counter", mode, "--drain-timeout", "30")
    client = LinePeer(server.port)
    assert client.line() == b"ready"
    client.send(b"sleep")
    server.wait_for_stderr("counter sleeping")  # the request is in: now stop the server
    server.process.send_signal(signal.SIGTERM)
    assert client.line() == b"slept"  # answered before the connection closed
    assert client.rest() == b""
    client.close()
    assert server.process.wait(30) == 0
    server.wait_for_stderr("counter session ended: drain")


def test_inetd_serves_a_session(plugin: dict[str, str]) -> None:
    client, process = start_inetd("t-counter", env=plugin)
    with client:
        client.sendall(b"a\nmany\nQUIT\n")
        assert recv_until_closed(client) == b"ready\n1\none\ntwo\nthree\nbye\n"
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert b"counter session ended: closed" in stderr


def test_unknown_plugin_service_is_a_usage_error() -> None:
    done = run([*script("tcpkit"), "serve", "t-nosuch"])
    assert done.returncode == 2


@pytest.mark.parametrize("mode", MODES)
def test_limits_hold_for_sessions(mode: str, serve: Start) -> None:
    """--max-line closes after an error reply; --idle-timeout closes a silent client;
    disconnected() hears why each time."""
    server = serve("t-counter", mode, "--max-line", "8", "--idle-timeout", "1")
    client = LinePeer(server.port)
    assert client.line() == b"ready"
    client.send(b"a", b"x" * 20)
    assert client.line() == b"1"
    assert client.line() == b"error: line too long (max 8 bytes)"
    assert client.rest() == b""
    client.close()
    server.wait_for_stderr("counter session ended: line too long")
    silent = LinePeer(server.port)
    assert silent.line() == b"ready"
    assert silent.rest() == b""  # closed by the server, having sent nothing
    silent.close()
    server.wait_for_stderr("counter session ended: idle")
    assert server.stop() == 0
