"""Every serving mode, end to end: real server processes, real loopback sockets.

Each test runs over all four modes (``--mode async|thread|fork|iterative``)
unless the behaviour only exists in some: the same services, limits, logs,
drain and process hygiene are expected from each.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    Server,
    connect,
    descendants,
    exchange,
    process_cpu_seconds,
    recv_lines,
    recv_until_closed,
    rss_kb,
    run,
    script,
    start_server,
    tree_total,
)
from factor_helpers import pool_workers
from tcpkit.serving.run import MODES

# 100 digits, two 50-digit primes: far beyond any time limit used here.
HARD = (100000000000000000000000000000000000000000000000151
        * 300000000000000000000000000000000000000000000000073)
# 53 digits: about 0.4 CPU seconds of factoring (enough to be "in flight" at a signal).
MEDIUM_FACTORS = (100000000000000000000000067, 700000000000000000000000039)
MEDIUM = MEDIUM_FACTORS[0] * MEDIUM_FACTORS[1]


def tcpkit_serve(*args: str, services: int = 1) -> Server:
    return start_server([*script("tcpkit"), "serve", *args], services)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts; SIGKILLed after it if still running."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop(signal.SIGKILL)


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


def zombies(pid: int) -> list[int]:
    """Descendants of ``pid`` that have exited but were never reaped."""
    found = []
    for child in descendants(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            found.append(child)
    return found


def tree_rss_kb(pid: int) -> int:
    return tree_total(pid, rss_kb)


def wait_for(condition: object, timeout: float, step: float = 0.1) -> bool:
    """Poll ``condition()`` until true or ``timeout`` passes (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False


def wait_cpu_busy(pid: int, seconds: float, timeout: float = 30.0) -> None:
    """Wait until the server's process tree has worked ``seconds`` of CPU."""
    start = process_cpu_seconds(pid)
    assert wait_for(lambda: process_cpu_seconds(pid) - start >= seconds, timeout), \
        "the server never started working"


def alive(pid: int) -> bool:
    """Running (not exited, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpu_went_idle(pid: int, timeout: float) -> bool:
    """True once the server's process tree uses under 0.1 s of CPU in 0.5 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = process_cpu_seconds(pid)
        time.sleep(0.5)
        if process_cpu_seconds(pid) - before < 0.1:
            return True
    return False


def answers(port: int, line: bytes = b"new\n", reply: bytes = b"wen\n") -> bool:
    try:
        return exchange(port, line, timeout=5) == reply
    except OSError:
        return False


def abort(sock: socket.socket) -> None:
    """Leave abruptly: the kernel sends a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


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


# -- limits ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_busy_and_idle(mode: str, servers: list[Server]) -> None:
    server = tcpkit_serve("reverse", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--max-connections", "2", "--idle-timeout", "1")
    servers.append(server)
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
def test_factor_time_limit(mode: str, servers: list[Server]) -> None:
    server = tcpkit_serve("factor", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--time-limit", "1")
    servers.append(server)
    with connect(server.port, timeout=30) as sock:
        sock.sendall(f"{HARD}\n42\n".encode())
        assert recv_lines(sock, 2) == [b"error: time limit exceeded (1 s)\n", b"2 3 7\n"]
    assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("mode", MODES)
def test_cancel_on_disconnect_then_drain(mode: str, servers: list[Server]) -> None:
    """A client that leaves stops its work; SIGTERM lets a request in flight finish."""
    server = tcpkit_serve("factor", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--time-limit", "60", "--factor-workers", "1",
                          "--drain-timeout", "60")  # a loaded machine is slow, not wrong
    servers.append(server)
    leaver = connect(server.port)
    leaver.sendall(f"{HARD}\n".encode())
    # The one worker (--factor-workers 1), found by what it is: sampling CPU
    # picked the forkserver, still busy preloading PARI on a loaded machine.
    assert wait_for(lambda: len(pool_workers(server.pid)) == 1, 30), "no worker started"
    [worker] = pool_workers(server.pid)
    wait_cpu_busy(server.pid, 0.2)
    abort(leaver)
    # The worker running the job is killed (a fresh one replaces it)...
    assert wait_for(lambda: not alive(worker), 15), "factor work went on after its client left"
    # ...and nothing else keeps the CPU busy.
    assert cpu_went_idle(server.pid, timeout=15)

    stayer = connect(server.port, timeout=30)
    stayer.sendall(f"{MEDIUM}\n".encode())
    wait_cpu_busy(server.pid, 0.1)
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
                                                         servers: list[Server]) -> None:
    server = tcpkit_serve("reverse", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--drain-timeout", "1")
    servers.append(server)
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
def test_workers_restart_and_stop(mode: str, servers: list[Server]) -> None:
    server = tcpkit_serve("reverse", "--listen", "127.0.0.1:0", "--mode", mode,
                          "--workers", "2")
    servers.append(server)
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


# -- running out of file descriptors ------------------------------------------


@pytest.mark.parametrize(("mode", "limit", "count"), [("async", 64, 100), ("thread", 40, 60)])
def test_refuses_before_descriptors_run_out(servers: list[Server], mode: str, limit: int,
                                            count: int) -> None:
    """Under a low RLIMIT_NOFILE, more clients at once than fit: the server serves
    what fits, refuses the rest with a clear line at once — never a reset (libuv's
    EMFILE trick, async) nor a wait in the backlog with no answer (thread) — and
    serves normally when the flood is over, flood after flood."""
    server = start_server(["prlimit", f"--nofile={limit}:{limit}", "--", *script("tcpkit"),
                           "serve", "reverse", "--listen", "127.0.0.1:0", "--mode", mode])
    servers.append(server)
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
    if mode == "async":
        assert server.wait_for_stderr("accepting again")
        assert server.stderr().count("near the descriptor limit") == 1  # once per episode
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


def test_serve_help_documents_modes_and_workers() -> None:
    result = run([*script("tcpkit"), "serve", "--help"])
    assert result.returncode == 0
    text = result.stdout.decode()
    for word in (*MODES, "--workers", "N|auto", "--max-connections", "--idle-timeout",
                 "--max-line", "--drain-timeout"):
        assert word in text
    bad = run([*script("tcpkit"), "serve", "--mode", "bogus"])
    assert bad.returncode == 2
    assert run([*script("tcpkit"), "serve", "--workers", "0"]).returncode == 2
