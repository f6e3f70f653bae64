"""Scope: the serving modes' own behaviour -- services, limits, drain, backpressure, cancellation.

Each test runs over all four modes (``--mode async|thread|fork|iterative``)
unless the behaviour only exists in some: the same services, limits, logs,
drain, workers and process hygiene are expected from each; real server
processes, real loopback sockets.  Operator features (TLS, metrics, logs,
per-IP limits) in every mode are test_allmodes'; the command's options, exit
codes and messages test_e2e_serve's; hostile clients and server faults
test_reliability_*'.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.net import abort, connect, exchange, recv_lines, recv_until_closed
from helpers.numbers import HARD, MEDIUM, MEDIUM_FACTORS
from helpers.processes import (
    descendants,
    factor_workers,
    rss_kb,
    tree_total,
    wait_asleep,
    wait_for,
    wait_gone,
    wait_working,
    zombies,
)
from helpers.servers import Server, Servers, script, start_server
from tcpkit.serving.run import MODES


def tcpkit_serve(*args: str, services: int = 1) -> Server:
    return start_server([*script("tcpkit"), "serve", *args], services)


@pytest.fixture(scope="module", params=MODES)
def basic(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Both services in one mode, shared by the tests that leave it as they found it."""
    server = tcpkit_serve("reverse", "factor", "--mode", request.param,
                          "--listen", "reverse=127.0.0.1:0", "--listen", "factor=127.0.0.1:0",
                          "--max-line", "1000", services=2)
    yield server
    assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.stderr()


def mode_of(server: Server) -> str:
    found = re.search(r"mode=(\w+)", server.stderr())
    assert found
    return found.group(1)


def tree_rss_kb(pid: int) -> int:
    return tree_total(pid, rss_kb)


def answers(port: int, line: bytes = b"new\n", reply: bytes = b"wen\n") -> bool:
    try:
        return exchange(port, line, timeout=5) == reply
    except OSError:
        return False


# -- the services, in every mode ---------------------------------------------


def test_both_services_answer(basic: Server) -> None:
    assert exchange(basic.ports["reverse"], "hello\r\nan\u0303b\n".encode()) == \
        "olleh\r\nbn\u0303a\n".encode()
    assert exchange(basic.ports["factor"], b"42\n-42\n1024\nabc\n") == \
        b"2 3 7\n-1 2 3 7\n" + b"2 " * 9 + b"2\n" + b'error: not an integer: "abc"\n'


def test_pipelining_keeps_order(basic: Server) -> None:
    lines = [f"line {i} {'x' * (i % 50)}" for i in range(2000)]
    payload = "".join(f"{line}\r\n" if i % 7 == 0 else f"{line}\n"
                      for i, line in enumerate(lines)).encode()
    expected = "".join(f"{line[::-1]}\r\n" if i % 7 == 0 else f"{line[::-1]}\n"
                       for i, line in enumerate(lines)).encode()
    assert exchange(basic.ports["reverse"], payload) == expected
    numbers = range(2, 2002)
    replies = exchange(basic.ports["factor"], "".join(f"{n}\n" for n in numbers).encode())
    assert replies.decode().splitlines() == [
        " ".join(str(p) for p in _factors(n)) for n in numbers]


def _factors(n: int) -> list[int]:
    found, p = [], 2
    while p * p <= n:
        while n % p == 0:
            found.append(p)
            n //= p
        p += 1
    return [*found, n] if n > 1 else found


def test_half_close_answers_the_last_line(basic: Server) -> None:
    with connect(basic.ports["reverse"]) as sock:
        sock.sendall(b"first\nlast, unterminated")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b"tsrif\ndetanimretnu ,tsal\n"


def test_max_line(basic: Server) -> None:
    with connect(basic.ports["reverse"]) as sock:
        sock.sendall(b"ok\n" + b"x" * 1001 + b"\nnever answered\n")
        assert recv_until_closed(sock) == b"ko\nerror: line too long (max 1000 bytes)\n"
    assert exchange(basic.ports["reverse"], b"y" * 1000 + b"\n") == b"y" * 1000 + b"\n"


def test_backpressure_bounds_memory(basic: Server) -> None:
    """A client pushing 50 MB without reading is stopped; others are served meanwhile."""
    port, total = basic.ports["reverse"], 50 << 20
    before = tree_rss_kb(basic.pid)
    pusher = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        pusher.setsockopt(socket.SOL_SOCKET, option, 1 << 16)
    pusher.connect(("127.0.0.1", port))
    pusher.settimeout(0.2)
    sent = [0]
    done = threading.Event()

    def push() -> None:
        chunk = (b"0123456789" * 9 + b"abcdefgh\n") * 600  # 60 KB of 99-byte lines
        while sent[0] < total and not done.is_set():
            try:
                sent[0] += pusher.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    try:
        # Wait until the pusher stalls: the server has stopped reading it.
        last = -1
        stalled = 0
        deadline = time.monotonic() + 30
        while stalled < 4 and sent[0] < total and time.monotonic() < deadline:
            time.sleep(0.25)
            stalled = stalled + 1 if sent[0] == last else 0
            last = sent[0]
        assert sent[0] < total, "the server read all 50 MB from a client that never reads"
        growth_mb = (tree_rss_kb(basic.pid) - before) / 1024
        assert growth_mb < 64, f"server memory grew by {growth_mb:.0f} MB"
        if mode_of(basic) != "iterative":  # iterative serves one client at a time
            assert exchange(port, b"meanwhile\n", timeout=10) == b"elihwnaem\n"
    finally:
        done.set()
        thread.join(5)
        abort(pusher)
    assert exchange(port, b"after\n", timeout=20) == b"retfa\n"


def test_no_zombies_left(basic: Server) -> None:
    for _ in range(5):
        assert exchange(basic.ports["reverse"], b"z\n") == b"z\n"
    assert wait_for(lambda: not zombies(basic.pid), 5), zombies(basic.pid)
    if mode_of(basic) == "fork":  # every per-client child has exited and been reaped
        assert wait_for(lambda: not descendants(basic.pid), 5), descendants(basic.pid)


def test_fork_child_signalled_drains_only_its_client(serve: Servers) -> None:
    """A child keeps its parent's signal handlers (installing its own would copy
    pages): SIGTERM must still end just that child's client, SIGHUP nothing."""
    server = serve("reverse", "--listen", "127.0.0.1:0", "--mode", "fork")
    first = connect(server.port)
    first.sendall(b"one\n")
    assert recv_lines(first, 1) == [b"eno\n"]
    assert wait_for(lambda: len(descendants(server.pid)) == 1, 10)
    first_child = descendants(server.pid)[0]
    second = connect(server.port)
    second.sendall(b"two\n")
    assert recv_lines(second, 1) == [b"owt\n"]
    assert wait_for(lambda: len(descendants(server.pid)) == 2, 10)
    second_child = next(pid for pid in descendants(server.pid) if pid != first_child)
    os.kill(second_child, signal.SIGHUP)  # a reload is the parent's: the child ignores it
    os.kill(first_child, signal.SIGTERM)
    assert recv_until_closed(first) == b""  # drained: nothing was pending
    second.sendall(b"three\n")
    assert recv_lines(second, 1) == [b"eerht\n"]
    assert answers(server.port)  # the parent still serves new clients
    first.close()
    second.close()
    assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.stderr()


def test_fork_child_of_a_killed_parent_drains_its_client(serve: Servers) -> None:
    """A child waiting in recv (the driver's fast path) sees no EOF on the stop
    pipe: it must still notice that its parent is gone and close its client."""
    server = serve("reverse", "--listen", "127.0.0.1:0", "--mode", "fork")
    with connect(server.port) as client:
        client.sendall(b"one\n")
        assert recv_lines(client, 1) == [b"eno\n"]
        assert wait_for(lambda: len(descendants(server.pid)) == 1, 10)
        child = descendants(server.pid)[0]
        server.process.kill()
        server.process.wait(10)
        client.settimeout(15)
        assert recv_until_closed(client) == b""  # drained within a tick, not at idle
    assert wait_gone(child, 10)


def test_blocking_modes_load_no_event_loop(serve: Servers) -> None:
    """asyncio and uvloop are imported only by the async mode: a fork-mode server
    (each child a copy of it) and its children stay that much smaller."""
    server = serve("reverse", "--listen", "127.0.0.1:0", "--mode", "fork")
    with connect(server.port) as client:
        client.sendall(b"one\n")
        assert recv_lines(client, 1) == [b"eno\n"]
        assert wait_for(lambda: len(descendants(server.pid)) == 1, 10)
        for pid in (server.pid, *descendants(server.pid)):
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "_asyncio." not in maps and "uvloop" not in maps, pid
    assert server.stop(signal.SIGTERM) == 0


# -- limits ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_busy_and_idle(mode: str, serve: Servers) -> None:
    server = serve("reverse", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--max-connections", "2", "--idle-timeout", "1")
    first = connect(server.port)
    first.sendall(b"one\n")
    assert recv_lines(first, 1) == [b"eno\n"]
    second = connect(server.port)
    if mode == "iterative":
        # One client at a time: the second waits in the backlog until the
        # first is closed for idling, then it is served.
        second.sendall(b"two\n")
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.recv(100)
        second.settimeout(10)
        assert recv_until_closed(first) == b""  # closed idle
        assert recv_lines(second, 1) == [b"owt\n"]
        busy = 0
    else:
        second.sendall(b"two\n")
        assert recv_lines(second, 1) == [b"owt\n"]
        with connect(server.port) as third:
            assert recv_until_closed(third) == b"error: server busy\n"
        busy = 1
        assert recv_until_closed(first) == b""  # idle for 1 s: closed
    assert recv_until_closed(second) == b""
    first.close()
    second.close()
    # (a fork/thread server may take a moment to count a closed client out)
    assert wait_for(lambda: answers(server.port, b"later\n", b"retal\n"), 10, 0.2)
    assert server.stop(signal.SIGTERM) == 0
    # The retry above may itself meet a busy server once more while the closed
    # clients are being counted out, so "busy" is a lower bound.
    counted = re.search(r"(\d+) refused busy, 2 closed idle", server.stderr())
    assert counted is not None and int(counted.group(1)) >= busy
    if busy:
        assert "refused 127.0.0.1:" in server.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_factor_time_limit(mode: str, serve: Servers) -> None:
    server = serve("factor", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--time-limit", "1")
    with connect(server.port, timeout=30) as sock:
        sock.sendall(f"{HARD}\n42\n".encode())
        assert recv_lines(sock, 2) == [b"error: time limit exceeded (1 s)\n", b"2 3 7\n"]
    assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("mode", MODES)
def test_cancel_on_disconnect_then_drain(mode: str, serve: Servers) -> None:
    """A client that leaves stops its work; SIGTERM lets a request in flight finish."""
    server = serve("factor", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--time-limit", "60", "--factor-workers", "1",
                          "--drain-timeout", "60")  # a loaded machine is slow, not wrong
    leaver = connect(server.port)
    leaver.sendall(f"{HARD}\n".encode())
    # The job's worker, found by what it is: the only child of the pool's forkserver.
    worker = wait_working(lambda: factor_workers(server.pid))
    abort(leaver)
    # The worker running the job is killed (a fresh one replaces it)...
    assert wait_gone(worker), "factor work went on after its client left"
    # ...and no worker goes on computing.
    assert wait_asleep(lambda: factor_workers(server.pid)), "a factor worker is still busy"

    stayer = connect(server.port, timeout=30)
    stayer.sendall(f"{MEDIUM}\n".encode())
    wait_working(lambda: factor_workers(server.pid))  # in flight when the signal comes
    assert wait_for(lambda: not zombies(server.pid), 5), zombies(server.pid)
    family = [server.pid, *descendants(server.pid)]
    server.process.send_signal(signal.SIGTERM)
    reply = recv_until_closed(stayer)
    stayer.close()
    assert reply == f"{MEDIUM_FACTORS[0]} {MEDIUM_FACTORS[1]}\n".encode()
    assert server.stop() == 0
    assert re.search(r"stopped after .*: \d+ connections", server.stderr())
    assert "Traceback" not in server.stderr()
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in family), 10)


@pytest.mark.parametrize("mode", MODES)
def test_drain_timeout_cuts_off_a_client_that_never_reads(mode: str,
                                                         serve: Servers) -> None:
    server = serve("reverse", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--drain-timeout", "1")
    with connect(server.port) as sock:
        server.wait_for_stderr("accept ")
        sock.settimeout(0.5)
        chunk, sent = b"x" * 99 + b"\n", 0
        with contextlib.suppress(TimeoutError):
            while sent < 64 << 20:  # until the server stops reading us
                sent += sock.send(chunk * 1000)
        assert sent < 64 << 20
        assert server.stop(signal.SIGTERM) == 0
    assert "drain timeout" in server.stderr()
    assert re.search(r"stopped after .*: 1 connections", server.stderr())


# -- workers -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_workers_restart_and_stop(mode: str, serve: Servers) -> None:
    server = serve("reverse", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--workers", "2")
    server.wait_for_stderr(r"(?s)worker \d+ started.*worker \d+ started")
    workers = [int(p) for p in re.findall(r"worker (\d+) started", server.stderr())]
    assert len(workers) == 2
    assert all(pid in descendants(server.pid) for pid in workers)
    for i in range(4):
        assert exchange(server.port, f"before {i}\n".encode()) == f"{i} erofeb\n".encode()
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_for_stderr(rf"worker {victim} was killed by SIGKILL; starting a new one")
    assert wait_for(lambda: len(re.findall(r"worker \d+ started", server.stderr())) == 3, 10)
    replacement = int(re.findall(r"worker (\d+) started", server.stderr())[-1])
    assert replacement not in workers
    assert replacement in descendants(server.pid)
    for i in range(6):
        assert exchange(server.port, f"after {i}\n".encode()) == f"{i} retfa\n".encode()
    assert server.stderr().count("was killed") == 1
    family = [server.pid, *descendants(server.pid)]
    assert wait_for(lambda: not zombies(server.pid), 5), zombies(server.pid)
    assert server.stop(signal.SIGTERM) == 0
    assert server.stderr().count("Listening on") == 1
    assert re.search(r"stopped after .*: \d+ connections", server.stderr())
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in family), 10)


# -- async: a listener closed by the event loop is served again ---------------------

RELISTEN = """
import asyncio, logging, socket, sys
from tcpkit.endpoints import Endpoint
from tcpkit.registry import get
from tcpkit.serving.modes.aio import AsyncServer
from tcpkit.serving.modes.loop import install_uvloop
from tcpkit.serving.run import open_listeners

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
listeners = open_listeners([(get("reverse"), Endpoint(host="127.0.0.1", port=0))])
port = listeners[0].sock.getsockname()[1]

async def talk(text: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(text); writer.write_eof()
    data = await reader.read()
    writer.close()
    return data

async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)

async def talk_once_served(text: bytes, timeout: float = 10.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await asyncio.wait_for(talk(text), 5)
        except OSError:  # not listening again yet
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)

async def main() -> None:
    server = AsyncServer(listeners)
    task = asyncio.create_task(server.serve())
    print("before", await talk_once_served(b"abc\\n"))
    server._servers[0].close()  # what uvloop does to the listener after a fatal accept error
    await until(lambda: server._serving_socks[0].fileno() == -1)
    print("closed dup fileno", server._serving_socks[0].fileno())
    print("after", await talk_once_served(b"xyz\\n"))
    server.stop()
    await task

install_uvloop()
asyncio.run(main())
"""


def test_async_listens_again_after_the_loop_closes_its_socket() -> None:
    """uvloop closes a listening handle for good after an accept error it deems
    fatal (ENOMEM, ENOBUFS, EMFILE without libuv's reserve descriptor); the server
    notices within a tick and serves the same port again."""
    done = subprocess.run([sys.executable, "-c", RELISTEN], capture_output=True, timeout=60)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert "before b'cba\\n'" in out and "closed dup fileno -1" in out
    assert "after b'zyx\\n'" in out
    assert err.count("listening on it again") == 1


# -- running out of file descriptors ------------------------------------------


@pytest.mark.parametrize(("mode", "limit", "count"), [("async", 64, 100), ("thread", 40, 60)])
def test_refuses_before_descriptors_run_out(serve: Servers, mode: str, limit: int,
                                            count: int) -> None:
    """Under a low RLIMIT_NOFILE, more clients at once than fit: the server serves
    what fits, refuses the rest with a clear line at once — never a reset (libuv's
    EMFILE trick, async) nor a wait in the backlog with no answer (thread) — and
    serves normally when the flood is over, flood after flood."""
    server = serve.command(["prlimit", f"--nofile={limit}:{limit}", "--", *script("tcpkit"),
                           "serve", "reverse", "--listen", "127.0.0.1:0", "--mode", mode])
    room = int(server.wait_for_stderr(
        rf"descriptor limit {limit}: room for (\d+) connections").group(1))
    assert 1 < room < limit
    clients = [connect(server.port) for _ in range(count)]
    try:
        for sock in clients[room:]:  # the backlog is accepted in order: these are refused
            assert recv_until_closed(sock) == b"error: server busy\n"
        for number, sock in enumerate(clients[:room]):  # ...and these all served
            sock.sendall(b"%d\n" % number)
            assert recv_lines(sock, 1) == [str(number).encode()[::-1] + b"\n"]
    finally:
        for sock in clients:
            sock.close()
    # The gate logs the episode in every mode: once when it begins, once when it ends.
    assert server.wait_for_stderr("accepting again: ")
    assert server.stderr().count("near the descriptor limit") == 1
    assert wait_for(lambda: answers(server.port), 10, 0.5)
    for _ in range(3):  # a second flood is refused and survived the same way
        extra = [connect(server.port) for _ in range(room + 5)]
        assert recv_until_closed(extra[-1]) == b"error: server busy\n"
        for sock in extra:
            sock.close()
        assert wait_for(lambda: answers(server.port), 10, 0.5)
    assert "Too many open files" not in server.stderr()
    assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.stderr()
