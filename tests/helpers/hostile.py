"""Hostile clients and the scenarios they make, shared by the tests and the long form.

Each scenario starts nothing itself: it gets a running server (a
:class:`helpers.servers.Server`) and sizes (how many clients, how many bytes), throws
its clients at the server, and returns an :class:`Outcome` that says what load
was held, what was injected, what was lost and how high the server's memory
went.  ``tests/test_reliability_*.py`` run them with small sizes and assert;
``bench/reliability.py`` runs them with the issue's full sizes and writes the
figures to ``RELIABILITY.md``.  One definition, two scales.

Everything here talks to loopback only and stops by itself: every wait has a
deadline, every socket is closed on the way out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers.net import abort, connect, free_ports, recv_until_closed
from helpers.processes import (
    alive,
    asleep,
    cpu_seconds,
    descendants,
    factor_workers,
    open_fds,
    pss_kb,
    tree_total,
    wait_for,
    wait_gone,
    wait_working,
)
from helpers.servers import Server

LOOPBACK = "127.0.0.1"


# -- measuring the server ---------------------------------------------------------


def tree_pss_kb(pid: int) -> int:
    """Memory of a process and all its descendants (fork mode's children count too)."""
    return tree_total(pid, pss_kb)


@dataclass
class Snapshot:
    """What the server holds at one moment."""

    fds: int
    children: int
    pss_kb: int

    @classmethod
    def of(cls, pid: int) -> Snapshot:
        return cls(open_fds(pid), len(descendants(pid)), tree_pss_kb(pid))


class Sampler:
    """Samples a server's memory (PSS, with its children) in the background; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_pss_kb = tree_pss_kb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.peak_pss_kb = max(self.peak_pss_kb, tree_pss_kb(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def settle(pid: int, baseline: Snapshot, timeout: float = 15.0) -> Snapshot:
    """Wait until the server's fds and children are back to ``baseline`` (or time out)."""
    deadline = time.monotonic() + timeout
    while True:
        now = Snapshot.of(pid)
        if (now.fds <= baseline.fds and now.children <= baseline.children) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


QUIET = Snapshot(fds=1 << 30, children=0, pss_kb=0)  # settle() until no children are left


# -- outcome ----------------------------------------------------------------------


@dataclass
class Outcome:
    """One scenario's figures: a row of RELIABILITY.md."""

    scenario: str
    mode: str
    load: str
    injected: str
    lost: int = 0  # replies a well-behaved client should have had and did not
    peak_pss_kb: int = 0
    details: dict[str, object] = field(default_factory=dict)


# -- well-behaved client ------------------------------------------------------------


def well_behaved(port: int, line: bytes = b"hello", timeout: float = 20.0) -> bytes:
    """One request over a fresh connection; the reply line (empty on failure)."""
    try:
        with connect(port, timeout=timeout) as sock:
            sock.sendall(line + b"\n")
            sock.shutdown(socket.SHUT_WR)
            return recv_until_closed(sock)
    except OSError:
        return b""


def served(port: int, attempts: int = 1, timeout: float = 20.0) -> int:
    """How many of ``attempts`` well-behaved requests got the right reply."""
    return sum(well_behaved(port, b"ping %d" % i, timeout) == b"%d gnip\n" % i
               for i in range(attempts))


# -- hostile building blocks -------------------------------------------------------


@contextlib.contextmanager
def crowd(port: int, count: int, timeout: float = 10.0) -> Iterator[list[socket.socket]]:
    """``count`` open connections (fewer if the kernel refuses some); closed at exit."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                socks.append(connect(port, timeout=timeout))
            except OSError:
                break
        yield socks
    finally:
        for sock in socks:
            sock.close()


def classify_extra(port: int, timeout: float = 10.0) -> str:
    """What an extra client of a full server sees: busy, refused, served or other."""
    try:
        with connect(port, timeout=timeout) as sock:
            sock.sendall(b"extra\n")
            with contextlib.suppress(OSError):  # a client served after all must not hang
                sock.shutdown(socket.SHUT_WR)
            reply = recv_until_closed(sock)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "oserror")
    if reply == b"error: server busy\n":
        return "busy"
    if reply == b"artxe\n":
        return "served"
    return f"other:{reply[:40]!r}"


# -- scenarios -------------------------------------------------------------------------


def slowloris(server: Server, clients: int, idle_timeout: float, mode: str) -> Outcome:
    """Half the clients trickle one byte a second and never end a line; half go silent.

    The idle timeout frees the silent ones; the per-line deadline (a line must
    be complete within the idle timeout of its first byte) frees the trickling
    ones, which are never idle.  A well-behaved client asks once a second
    meanwhile and must be answered every time.
    """
    port = server.port
    asked = answered = 0
    with Sampler(server.pid) as sampler, crowd(port, clients) as socks:
        for sock in socks:
            sock.sendall(b"x")
        trickling, silent = socks[: len(socks) // 2], socks[len(socks) // 2 :]
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(trickling, stop), daemon=True)
        trickler.start()
        try:
            deadline = time.monotonic() + idle_timeout + 2
            while time.monotonic() < deadline:
                asked += 1
                answered += served(port)
                time.sleep(1.0)
            freed_silent = count_closed(silent, idle_timeout + 5)
            freed_trickling = count_closed(trickling, idle_timeout + 5)
        finally:
            stop.set()
            trickler.join(5)
    return Outcome(
        "slowloris", mode, f"{len(socks)} clients, 1 byte/s or silent",
        f"--idle-timeout {idle_timeout:g}", lost=asked - answered,
        peak_pss_kb=sampler.peak_pss_kb,
        details={"connected": len(socks), "freed_silent": freed_silent,
                 "silent": len(silent), "freed_trickling": freed_trickling,
                 "trickling": len(trickling), "good_asked": asked, "good_answered": answered})


def _trickle(socks: list[socket.socket], stop: threading.Event) -> None:
    """One byte a second on every socket, never a newline, until ``stop``."""
    while not stop.wait(1.0):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"x")


def count_closed(socks: list[socket.socket], timeout: float) -> int:
    """How many of ``socks`` the peer closes (EOF or reset) within ``timeout``."""
    return len(final_reads(socks, timeout, lambda data: not data)[0])


def final_reads(socks: list[socket.socket], timeout: float,
                final: Callable[[bytes], bool] = lambda data: True,
                ) -> tuple[list[bytes], int]:
    """Read every socket until a read is ``final`` (EOF and resets read as b"").

    Returns those final reads and how many sockets had none within ``timeout``.
    """
    finals: list[bytes] = []
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if final(data):
                    finals.append(data)
                    selector.unregister(sock)
        return finals, len(selector.get_map())
    finally:
        selector.close()


def _push_without_reading(socks: list[socket.socket], each: int, stall: float,
                          pushing: threading.Event | None = None) -> int:
    """Send ``each`` bytes of short lines on every socket, never reading; bytes sent.

    Stops when every socket has sent its share or none made progress for
    ``stall`` seconds (the server stopped reading: flow control at work).
    Sets ``pushing`` once every socket could have sent a chunk (or on the way out).
    """
    chunk = (b"0123456789abcdef" * 4 + b"\n") * 1024  # 65 KiB of 65-byte lines
    left = {sock: each for sock in socks}
    sent_total = 0
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_WRITE)
    last_progress = time.monotonic()
    try:
        while left and time.monotonic() - last_progress < stall:
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    sent = sock.send(chunk[: left[sock]])
                except BlockingIOError:
                    continue
                except OSError:
                    sent = 0
                    left[sock] = 0
                sent_total += sent
                left[sock] -= sent
                if pushing is not None and sent_total >= len(socks) * len(chunk):
                    pushing.set()
                if sent:
                    last_progress = time.monotonic()
                if left[sock] <= 0:
                    selector.unregister(sock)
                    del left[sock]
    finally:
        selector.close()
        if pushing is not None:
            pushing.set()
    return sent_total


def never_reading(server: Server, clients: int, megabytes: int, mode: str) -> Outcome:
    """Clients push MBs of lines and never read a reply; the others are served."""
    port = server.port
    baseline = tree_pss_kb(server.pid)
    with Sampler(server.pid) as sampler, crowd(port, clients) as socks:
        pushing = threading.Event()
        pusher = threading.Thread(target=lambda: results.append(
            _push_without_reading(socks, megabytes << 20, 3.0, pushing)))
        results: list[int] = []
        pusher.start()
        pushing.wait(60)  # the others are asked while the flood is on
        good = served(port, 3)
        pusher.join(600)
        held = tree_pss_kb(server.pid)
        for sock in socks:
            abort(sock)
        socks.clear()
    after = served(port, 2)
    return Outcome(
        "never-reading clients", mode, f"{clients} clients x {megabytes} MB of lines",
        "no reads", lost=5 - good - after, peak_pss_kb=sampler.peak_pss_kb,
        details={"baseline_pss_kb": baseline, "held_pss_kb": held,
                 "pushed_mb": round(sum(results) / (1 << 20), 1),
                 "growth_kb": sampler.peak_pss_kb - baseline})


def connection_flood(server: Server, held: int, extra: int, mode: str) -> Outcome:
    """``held`` clients fill ``--max-connections``; each of ``extra`` more is turned away."""
    port = server.port
    kinds: dict[str, int] = {}
    # Fork mode counts a child until it is reaped: let earlier clients' go first.
    settle(server.pid, QUIET, timeout=10)
    with Sampler(server.pid) as sampler, crowd(port, held) as socks:
        held_count = 0
        for sock in socks:  # make sure each one really holds a slot
            sock.sendall(b"held\n")
            held_count += sock.recv(16) == b"dleh\n"
        for _ in range(extra):
            kind = classify_extra(port)
            kinds[kind] = kinds.get(kind, 0) + 1
    settle(server.pid, QUIET, timeout=10)  # the held clients' slots are free again
    after = served(port, 3)
    return Outcome(
        "connection flood > --max-connections", mode, f"{held} held + {extra} extra",
        f"--max-connections {held}", lost=3 - after, peak_pss_kb=sampler.peak_pss_kb,
        details={"held": held_count, "extras": kinds, "served_after": after})


def fd_exhaustion(server: Server, clients: int, mode: str) -> Outcome:
    """More clients than the server has file descriptors: it never crashes.

    Every client sends a request and waits.  What the server cannot accept it
    may keep in the listen backlog (answered once fds free up) or refuse at once
    (libuv, under uvloop, accepts and closes them); what it must not do is die,
    or leave a client hanging after the flood ends.  Then the first half leave
    and fresh clients must be served again.
    """
    port = server.port
    with Sampler(server.pid) as sampler, crowd(port, clients, timeout=30) as socks:
        for i, sock in enumerate(socks):
            with contextlib.suppress(OSError):
                sock.sendall(b"c%d\n" % i)
        early = settle_replies(socks[: clients // 2], 5.0)
        for sock in socks[: clients // 2]:
            sock.close()
        late = settle_replies(socks[clients // 2 :], 30.0)
        alive = server.process.poll() is None
    after = served(port, 2)
    kinds = {key: early.get(key, 0) + late.get(key, 0) for key in {*early, *late}}
    return Outcome(
        "connection flood > fd limit", mode, f"{clients} clients, RLIMIT_NOFILE 256",
        "EMFILE on accept", lost=late.get("hung", 0) + 2 - after,
        peak_pss_kb=sampler.peak_pss_kb,
        details={"connected": len(socks), "clients": kinds, "alive": alive,
                 "served_after": after})


def settle_replies(socks: list[socket.socket], timeout: float) -> dict[str, int]:
    """Wait for each socket's one-line reply: count served, busy, refused (closed
    without a word) and hung."""
    finals, hung = final_reads(socks, timeout)
    busy = sum(data.startswith(b"error: server busy") for data in finals)
    served = sum(data.endswith(b"\n") for data in finals) - busy
    return {"served": served, "busy": busy, "refused": len(finals) - served - busy,
            "hung": hung}


def resets(server: Server, clients: int, mode: str) -> Outcome:
    """Clients that RST mid-line, mid-pipeline, or right after connecting."""
    port = server.port
    with Sampler(server.pid) as sampler:
        for i in range(clients):
            with contextlib.suppress(OSError):
                sock = connect(port)
                if i % 3 == 0:
                    sock.sendall(b"half a li")
                elif i % 3 == 1:
                    sock.sendall(b"line\n" * 2000)
                abort(sock)
        good = served(port, 3)
    return Outcome("resets (SO_LINGER 0)", mode, f"{clients} clients",
                   "RST mid-request", lost=3 - good, peak_pss_kb=sampler.peak_pss_kb)


def half_close(server: Server, clients: int, mode: str) -> Outcome:
    """Clients send lines and half-close at once: every reply still arrives, then EOF."""
    port = server.port
    lines = [b"line %d" % i for i in range(200)]
    payload = b"".join(line + b"\n" for line in lines)
    expected = b"".join(line[::-1] + b"\n" for line in lines)
    lost = 0
    with Sampler(server.pid) as sampler:
        for _ in range(clients):
            with connect(port) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                reply = recv_until_closed(sock)
            lost += 0 if reply == expected else 1
    return Outcome("early half-close", mode, f"{clients} clients x 200 lines",
                   "SHUT_WR right after sending", lost=lost,
                   peak_pss_kb=sampler.peak_pss_kb)


def pipelined(port: int, lines: list[bytes], timeout: float = 30.0) -> bytes:
    """Send every line at once, half-close, and read all replies (writer in a thread)."""
    payload = b"".join(line + b"\n" for line in lines)
    with connect(port, timeout=timeout) as sock:
        writer = threading.Thread(target=_send_then_shut, args=(sock, payload), daemon=True)
        writer.start()
        chunks = []
        with contextlib.suppress(OSError):  # a server that gives up may reset
            while data := sock.recv(1 << 16):
                chunks.append(data)
        writer.join(timeout)
    return b"".join(chunks)


def _send_then_shut(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)


def repeat(action: Callable[[], object], seconds: float) -> int:
    """Run ``action`` again and again for ``seconds``; how many times it ran."""
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action()
        count += 1
    return count


class PipelineClient:
    """Pipelines numbered lines to a reverse server and checks every reply.

    A writer thread sends ``line <i>`` without waiting; the reader counts the
    replies and checks each is the reverse of the request with the same number,
    in order.  ``requested`` counts lines the kernel took (sent), ``answered``
    the replies that came back; the server decides how many it read.
    """

    def __init__(self, port: int, batch: int = 64) -> None:
        self.sock = connect(port, timeout=30)
        self.batch = batch
        self.requested = 0
        self.answered = 0
        self.wrong = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> PipelineClient:
        self._writer.start()
        self._reader.start()
        return self

    def stop_sending(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 30.0) -> None:
        self._writer.join(timeout)
        self._reader.join(timeout)
        self.sock.close()

    def _write(self) -> None:
        try:
            while not self._stop.is_set():
                first = self.requested
                self.sock.sendall(b"".join(b"line %d\n" % i
                                           for i in range(first, first + self.batch)))
                self.requested += self.batch
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed: it stops reading when it drains

    def _read(self) -> None:
        buffer = b""
        try:
            while data := self.sock.recv(1 << 16):
                buffer += data
                *replies, buffer = buffer.split(b"\n")
                for reply in replies:
                    if reply != (b"line %d" % self.answered)[::-1]:
                        self.wrong += 1
                    self.answered += 1
        except OSError as exc:
            self.error = type(exc).__name__
        self._stop.set()  # the server is done with us: stop sending too


# -- behind a load balancer ---------------------------------------------------------------

CONTRIB_HAPROXY = Path(__file__).resolve().parents[2] / "contrib" / "haproxy" / "haproxy.cfg"
EXAMPLE_PORTS = [{"reverse": 17800, "factor": 17801}, {"reverse": 17810, "factor": 17811}]


def haproxy_config(stats: str, fronts: dict[str, int], instances: list[dict[str, int]]) -> str:
    """contrib/haproxy/haproxy.cfg as shipped, on this run's ports, checking every 200 ms,
    with an admin socket to watch the pool through."""
    text = CONTRIB_HAPROXY.read_text()
    for example, real in zip(EXAMPLE_PORTS, instances, strict=True):
        for service, port in example.items():
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{real[service]}")
    for service, port in fronts.items():
        text = text.replace(f"bind :{7800 if service == 'reverse' else 7801}",
                            f"bind 127.0.0.1:{port}")
    text = text.replace("    log global\n", "").replace("check inter 2s", "check inter 200ms")
    return text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)


def haproxy_stats(path: str) -> dict[str, dict[str, str]]:
    """``show stat`` over the admin socket: one dict of fields per server name."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"show stat\n")
        text = recv_until_closed(sock).decode()
    lines = text.strip().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {row["svname"]: row for row in rows if row.get("pxname") == "reverse_servers"}


def _sessions(path: str, name: str) -> int:
    """Sessions HAProxy has sent to backend server ``name`` so far (-1 if unknown)."""
    with contextlib.suppress(OSError, KeyError, IndexError, ValueError):
        return int(haproxy_stats(path)[name]["stot"])
    return -1


def wait_status(path: str, name: str, status: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, IndexError):
            if haproxy_stats(path)[name]["status"].startswith(status):
                return True
        time.sleep(0.1)
    return False


class Requester:
    """Clients in threads, each doing one request per short connection, until stopped.

    Failures are recorded with their time, so a test can tell which happened
    while a backend was dying.
    """

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(clients)]

    def __enter__(self) -> Requester:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            if well_behaved(self.port, b"via haproxy", timeout=10) == b"yxorpah aiv\n":
                self.ok += 1
            else:
                self.failures.append(time.monotonic())


def behind_haproxy(start_instance: Callable[[dict[str, int]], Server], workdir: Path,
                   clients: int, seconds: float, mode: str) -> Outcome:
    """Two tcpkit instances behind HAProxy; one is killed during load, then restarted.

    ``start_instance(ports)`` starts ``tcpkit serve`` with reverse and factor on
    those loopback ports.  Only requests in flight on the killed instance may
    fail: at most one per client, all between the kill and HAProxy marking the
    instance DOWN.
    """
    import signal
    import subprocess

    free = free_ports(6)  # all at once: six different ports
    ports = [{"reverse": free[0], "factor": free[1]}, {"reverse": free[2], "factor": free[3]}]
    instances = [start_instance(p) for p in ports]
    stats = str(workdir / "haproxy.sock")
    fronts = {"reverse": free[4], "factor": free[5]}
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(stats, fronts, ports))
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        up = all(wait_status(stats, name, "UP") for name in ("tcpkit1", "tcpkit2"))
        with Requester(fronts["reverse"], clients) as load, \
                Sampler(instances[1].pid) as sampler:
            time.sleep(seconds / 3)
            killed_at = time.monotonic()
            instances[0].process.send_signal(signal.SIGKILL)
            instances[0].process.wait(10)
            went_down = wait_status(stats, "tcpkit1", "DOWN")
            down_at = time.monotonic()
            time.sleep(seconds / 3)
            sessions_before = int(haproxy_stats(stats)["tcpkit1"]["stot"])
            instances[0] = start_instance(ports[0])
            came_back = wait_status(stats, "tcpkit1", "UP")
            time.sleep(seconds / 3)  # the last third of the load, both instances up
            # ...and at least until HAProxy has sent the restarted one a session.
            wait_for(lambda: _sessions(stats, "tcpkit1") > sessions_before, 10)
            sessions_after = _sessions(stats, "tcpkit1")
        early = [t for t in load.failures if t < killed_at]
        late = [t for t in load.failures if t > down_at + 1.0]
    finally:
        proxy.send_signal(signal.SIGUSR1)  # soft stop
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        for instance in instances:
            instance.stop()
    return Outcome(
        "behind HAProxy, one instance killed and restarted", mode,
        f"{clients} clients, short connections, {seconds:g} s", "kill -9 of one instance",
        lost=len(load.failures), peak_pss_kb=sampler.peak_pss_kb,
        details={"ok": load.ok, "failed": len(load.failures),
                 "failed_outside_kill_window": len(early) + len(late),
                 "both_up_first": up, "marked_down": went_down, "marked_up_again": came_back,
                 "sessions_to_restarted": sessions_after - sessions_before})


# -- faults of the server ------------------------------------------------------------------


def lines_read_per_client(server: Server) -> dict[int, int]:
    """Lines the server says it read from each client port (its ``close`` log lines)."""
    import re

    found = re.findall(r"close [\d.]+:(\d+) \((\d+) lines", server.stderr())
    return {int(port): int(lines) for port, lines in found}


def sigterm_under_load(server: Server, clients: int, mode: str,
                       before: int = 20_000) -> Outcome:
    """Pipelining clients; SIGTERM once ``before`` replies are in.  Every line the
    server read (by its own log) must come back, in order, and it must exit 0."""
    import signal

    load = [PipelineClient(server.port).start() for _ in range(clients)]
    ports = [client.sock.getsockname()[1] for client in load]
    deadline = time.monotonic() + 20
    while sum(c.answered for c in load) < before and time.monotonic() < deadline:
        time.sleep(0.05)
    with Sampler(server.pid) as sampler:
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
        seconds = time.monotonic() - stopped_at
    for client in load:
        client.join()
    server.stop()  # collects the rest of its log
    read = lines_read_per_client(server)
    answered = sum(c.answered for c in load)
    return Outcome(
        "SIGTERM during pipelined load", mode, f"{clients} pipelining clients",
        "SIGTERM", lost=sum(read.get(p, 0) for p in ports) - answered,
        peak_pss_kb=sampler.peak_pss_kb,
        details={"exit": code, "answered": answered, "wrong": sum(c.wrong for c in load),
                 "per_client_match": all(read.get(p) == c.answered
                                         for p, c in zip(ports, load, strict=True)),
                 "stop_seconds": round(seconds, 2),
                 "tracebacks": server.stderr().count("Traceback")})


def abandoned_factorization(server: Server, number: int, mode: str) -> Outcome:
    """A client leaves (RST) during a long factorization: its worker must stop.

    The server runs with ``--factor-workers 1``: the job's worker is the only
    child of the pool's forkserver.  It must be killed (its PID goes), and the
    worker that replaces it must sit idle (asleep), not go on with the job.
    """
    with Sampler(server.pid) as sampler:
        sock = connect(server.port)
        sock.sendall(b"%d\n" % number)
        try:  # the worker pool starts lazily
            worker: int | None = wait_working(lambda: factor_workers(server.pid), cpu=0.5)
        except AssertionError:
            worker = None
        worked = cpu_seconds(worker) if worker else 0.0
        abort(sock)
        left = time.monotonic()
        killed = worker is not None and wait_gone(worker, 20)
        seconds = time.monotonic() - left
        idle = wait_for(lambda: all(asleep(each) for each in factor_workers(server.pid)), 10)
    good = served_factor(server.port)
    return Outcome(
        "client leaves during a long factorization", mode, "1 client, 76-digit semiprime",
        "RST while the worker computes", lost=1 - good, peak_pss_kb=sampler.peak_pss_kb,
        details={"worker_cpu_s": round(worked, 2), "seconds_to_kill": round(seconds, 1),
                 "started": worker is not None, "stopped": killed and idle})


def served_factor(port: int) -> int:
    with contextlib.suppress(OSError), connect(port, timeout=20) as sock:
        sock.sendall(b"-42\n")
        sock.shutdown(socket.SHUT_WR)
        return int(recv_until_closed(sock) == b"-1 2 3 7\n")
    return 0


def worker_killed(server: Server, clients: int, seconds: float, mode: str) -> Outcome:
    """``--workers 2``: one worker is killed with SIGKILL during load.

    The supervisor must start a new one; the other keeps serving; clients lose
    at most the requests in flight on the killed worker (one per client), and
    only between the kill and the replacement.
    """
    import re
    import signal

    def workers() -> list[int]:
        return [int(pid) for pid in re.findall(r"worker (\d+) started", server.stderr())]

    wait_for(lambda: len(workers()) >= 2, 20)
    victim = workers()[0]
    with Requester(server.port, clients) as load, Sampler(server.pid) as sampler:
        time.sleep(seconds / 3)
        ok_before = load.ok
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(workers()) >= 3, 20, step=0.02)
        replaced_at = time.monotonic()
        time.sleep(seconds / 3)  # the last third of the load
        wait_for(lambda: load.ok > ok_before, 10)  # ...and until someone is served again
        ok_after = load.ok
    late = [t for t in load.failures if t < killed_at or t > replaced_at + 1.0]
    running = [pid for pid in workers() if pid != victim and alive(pid)]
    return Outcome(
        "kill -9 of one worker (--workers 2)", mode,
        f"{clients} clients, short connections, {seconds:g} s", "SIGKILL to a worker",
        lost=len(load.failures), peak_pss_kb=sampler.peak_pss_kb,
        details={"ok_before_kill": ok_before, "ok_total": ok_after,
                 "failed": len(load.failures), "failed_outside_window": len(late),
                 "replaced": len(workers()) >= 3,
                 "replace_seconds": round(replaced_at - killed_at, 2),
                 "workers_alive": len(running)})
