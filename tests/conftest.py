"""Shared helpers: real server processes on real loopback sockets.

``serve(...)`` starts ``tcpkit serve`` (or any command that logs
``Listening on HOST:PORT``) as a subprocess on port 0, waits for that line and
gives back the port; the process is stopped by PID at the end of the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).parent
PEERS = HERE / "peers"
EXAMPLES = HERE.parent / "examples"
LISTENING = re.compile(r"Listening on (\S+):(\d+) \((\S+), mode=(\w+)\)")


def script(name: str) -> list[str]:
    """The command line of one of the package's console scripts."""
    # The interpreter's own bin directory first: in a virtualenv (or a worktree
    # with its own one) that is the tcpkit under test, whatever PATH says.
    beside = Path(sys.executable).parent / name
    return [str(beside) if beside.exists() else shutil.which(name) or name]


@dataclass
class Server:
    """A running server process and what it said on stderr."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)
    stderr_lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_stderr(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stderr())
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not in server stderr:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        # Children found now: after a SIGKILL the server cannot stop them, and a
        # factor worker would go on computing (it is not the server's child).
        tree = descendants(self.pid) if sig == signal.SIGKILL else []
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            tree = descendants(self.pid)
            self.process.kill()
            code = self.process.wait()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code


def start_server(args: list[str], services: int = 1, env: dict[str, str] | None = None,
                 stdout: int | None = subprocess.DEVNULL, pass_fds: tuple[int, ...] = (),
                 ) -> Server:
    """Start a server command and wait until it logs every ``Listening on`` line."""
    process = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})}, pass_fds=pass_fds)
    server = Server(process)
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace")
            server.stderr_lines.append(line)
            found = LISTENING.search(line)
            if found:
                server.ports[found.group(3)] = int(found.group(2))
                if len(server.ports) >= services:
                    ready.set()
        ready.set()

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    if not ready.wait(20) or len(server.ports) < services:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"server did not start: {args}\n{server.stderr()}")
    return server


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start ``tcpkit serve ARGS...`` on loopback port 0; stopped after the test."""
    started: list[Server] = []

    def start(*args: str, services: int = 1, listen: bool = True) -> Server:
        command = [*script("tcpkit"), "serve", *args]
        if listen and "--listen" not in args:
            names = [a for a in args if a in ("reverse", "factor")] or ["reverse"]
            for name in names:
                command += ["--listen", f"{name}=127.0.0.1:0" if len(names) > 1
                            else "127.0.0.1:0"]
            services = len(names)
        server = start_server(command, services)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


def plugin_env(target: Path, module: Path, points: dict[str, str],
               name: str = "tcpkit-test-plugin") -> dict[str, str]:
    """Make ``module`` importable as an installed plug-in registering ``points`` in the
    ``tcpkit.services`` group (a ``*.dist-info`` beside it); the environment to use."""
    shutil.copy(module, target)
    info = target / f"{name.replace('-', '_')}-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[tcpkit.services]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def install_examples(target: Path, *names: str) -> dict[str, str]:
    """Lay out packages of examples/ as pip installs them — the module plus a
    ``*.dist-info`` folder with its ``entry_points.txt`` — so a real ``tcpkit serve``
    finds their services as installed plug-ins; the environment to use."""
    for name in names:
        meta = tomllib.loads((EXAMPLES / name / "pyproject.toml").read_text())["project"]
        shutil.copy(EXAMPLES / name / f"{name}.py", target)
        info = target / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
        points = meta["entry-points"]["tcpkit.services"]
        (info / "entry_points.txt").write_text(
            "[tcpkit.services]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def load_example(name: str) -> ModuleType:
    """Import examples/NAME/NAME.py in this process (whether or not it is installed)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / name / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RedisServer:
    """A throw-away redis-server on loopback, stopped by PID."""

    def __init__(self) -> None:
        self.port = free_ports()[0]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        for line in self.process.stdout:  # wait for the event, not for time
            if b"Ready to accept connections" in line:
                break
        else:
            raise AssertionError("redis-server did not start")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free loopback port."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return sock


class LinePeer:
    """A line client over one real socket: read a line at a time, send several."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = connect(port, host, timeout)
        self.buffer = b""

    def line(self, keep_end: bool = False) -> bytes:
        """The next line, without its LF (with it if ``keep_end``); fails if the server closed."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(1 << 16)
            if not data:
                raise AssertionError(f"closed; got {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n" if keep_end else line

    def send(self, *lines: bytes, end: bytes = b"\n") -> None:
        self.sock.sendall(b"".join(line + end for line in lines))

    def rest(self) -> bytes:
        """Everything until the server closes."""
        rest, self.buffer = self.buffer + recv_until_closed(self.sock), b""
        return rest

    def close(self) -> None:
        self.sock.close()


def recv_until_closed(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def exchange(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send ``payload``, half-close, and return every byte the server replies."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_closed(sock)


def recv_lines(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly ``count`` lines (with terminators) from a socket."""
    buf = b""
    while buf.count(b"\n") < count:
        data = sock.recv(1 << 16)
        if not data:
            break
        buf += data
    lines = buf.split(b"\n")
    return [line + b"\n" for line in lines[:count]]


def run(args: list[str], stdin: bytes = b"", timeout: float = 60.0,
        ) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion, capturing both streams."""
    return subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)


def process_cpu_seconds(pid: int) -> float:
    """CPU time used by a process and all its live descendants (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for child in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid``."""
    found: list[int] = []
    # Every thread's children: a process started from a worker thread (as the
    # factor pool's forkserver is) is listed under that thread only.
    direct: list[int] = []
    try:  # the process may be gone between two reads of /proc
        listings = list(Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:
        return found
    for children in listings:
        try:
            direct.extend(int(p) for p in children.read_text().split())
        except OSError:
            continue
    for child in direct:
        found.append(child)
        found.extend(descendants(child))
    return found


def tree_total(pid: int, measure: Callable[[int], int]) -> int:
    """``measure`` summed over a process and all its live descendants."""
    total = 0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += measure(member)
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_ports(count: int = 1) -> list[int]:
    """Loopback ports free right now, for programs that cannot be given port 0."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def ipv6_loopback() -> bool:
    """Whether ::1 can be used here (containers often have IPv6 switched off)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


LOOPBACKS = ["127.0.0.1", "::1"] if ipv6_loopback() else ["127.0.0.1"]
needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


def needs(tool: str) -> pytest.MarkDecorator:
    """Skip unless ``tool`` is installed (CI installs them all)."""
    return pytest.mark.skipif(shutil.which(tool) is None and not os.environ.get("CI"),
                              reason=f"{tool} not installed")
