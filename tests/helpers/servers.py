"""Real server processes: start a command, wait until it listens, stop it by PID.

:func:`start_server` starts ``tcpkit serve`` (or any command that logs
``Listening on HOST:PORT``) as a subprocess, reads its stderr in a thread and
gives back a :class:`Server` once every listening line is in (:func:`start_on_port`:
once a server told its port listens there); :class:`Servers`
starts ``tcpkit serve`` on loopback port 0 and stops what it started (the
``serve`` fixtures of conftest.py and of the end-to-end tests); :func:`start_inetd`
hands ``tcpkit serve --inetd`` a real connection, as inetd does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers.net import inetd_pair, ipv6_loopback, listening
from helpers.processes import descendants, kill_all, wait_for

TESTS = Path(__file__).resolve().parent.parent
PEERS = TESTS / "peers"
LISTENING = re.compile(r"Listening on (\S+):(?P<port>\d+) \((?P<service>\S+), mode=(\w+)\)")


def script(name: str) -> list[str]:
    """The command line of one of the package's console scripts."""
    # The interpreter's own bin directory first: in a virtualenv (or a worktree
    # with its own one) that is the tcpkit under test, whatever PATH says.
    beside = Path(sys.executable).parent / name
    return [str(beside) if beside.exists() else shutil.which(name) or name]


def run(args: list[str], stdin: bytes = b"", timeout: float = 60.0,
        ) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion, capturing both streams."""
    return subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)


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
        found: list[re.Match[str]] = []

        def logged() -> bool:
            match = re.search(pattern, self.stderr())
            found.extend([match] if match else [])
            return match is not None

        if not wait_for(logged, timeout, step=0.02):
            raise AssertionError(f"{pattern!r} not in server stderr:\n{self.stderr()}")
        return found[0]

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
        kill_all(tree, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code


def start_server(args: list[str], services: int = 1, env: dict[str, str] | None = None,
                 stdout: int | None = subprocess.DEVNULL, pass_fds: tuple[int, ...] = (),
                 announces: re.Pattern[str] = LISTENING) -> Server:
    """Start a server command and wait until it logs every ``Listening on`` line
    (``announces``: another line, e.g. another program's, with groups ``port`` and
    ``service`` where it names them)."""
    process = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})}, pass_fds=pass_fds)
    server = Server(process)
    ready = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace")
            server.stderr_lines.append(line)
            found = announces.search(line)
            if found:
                port = found.groupdict().get("port")  # none for a Unix socket
                server.ports[found.groupdict().get("service") or ""] = int(port or 0)
                if len(server.ports) >= services:
                    ready.set()
        ready.set()

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    if not ready.wait(20) or len(server.ports) < services:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"server did not start: {args}\n{server.stderr()}")
    return server


def start_on_port(args: list[str], port: int, timeout: float = 20.0) -> Server:
    """Start a server that is told its port (one that logs no ``Listening on`` line,
    e.g. a benchmark anchor) and wait until it listens there."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server(process, ports={"": port})

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            server.stderr_lines.append(raw.decode("utf-8", "replace"))

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    if not wait_for(lambda: process.poll() is not None or listening(port), timeout) or (
            process.poll() is not None):
        server.stop(signal.SIGKILL)
        raise AssertionError(f"server did not listen on port {port}: {args}\n{server.stderr()}")
    return server


def start_inetd(*args: str, env: dict[str, str] | None = None, stderr_on_socket: bool = False,
                source: str = "127.0.0.1") -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """``tcpkit serve --inetd ARGS...`` as inetd starts it: one end of a real loopback
    connection (from ``source``) as its stdin and stdout (and stderr, if
    ``stderr_on_socket``; else a pipe).

    Returns the client's end and the process; our copy of the server's end is closed.
    """
    client, passed = inetd_pair(source)
    with passed:
        process = subprocess.Popen(
            [*script("tcpkit"), "serve", "--inetd", *args], stdin=passed, stdout=passed,
            stderr=passed if stderr_on_socket else subprocess.PIPE,
            env={**os.environ, **(env or {})})
    return client, process


class Servers:
    """``tcpkit serve ARGS...`` on loopback port 0, as many as a test wants; each
    stopped (SIGKILL, with its descendants) by :meth:`stop_all`.

    ``env``: added to each server's environment (e.g. :func:`plugin_env`'s, so that
    it finds plug-in services).
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.started: list[Server] = []
        self.env = env

    def __call__(self, *args: str, services: int = 1, listen: bool = True) -> Server:
        command = [*script("tcpkit"), "serve", *args]
        if listen and "--listen" not in args:
            names = [a for a in args if a in ("reverse", "factor")] or ["reverse"]
            for name in names:
                command += ["--listen", f"{name}=127.0.0.1:0" if len(names) > 1
                            else "127.0.0.1:0"]
            services = len(names)
        return self.command(command, services)

    def in_mode(self, service: str, mode: str, *args: str) -> Server:
        """``tcpkit serve SERVICE --listen 127.0.0.1:0 --mode MODE ARGS...``: one service
        (any, a plug-in's too) in one mode, the end-to-end tests' ``serve``."""
        return self.command([*script("tcpkit"), "serve", service, "--listen", "127.0.0.1:0",
                             "--mode", mode, *args])

    def command(self, args: list[str], services: int = 1,
                announces: re.Pattern[str] = LISTENING) -> Server:
        """Start any server command (e.g. ``tcpkit serve`` under prlimit), stopped likewise."""
        server = start_server(args, services, env=self.env, announces=announces)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
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


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


def needs(tool: str) -> pytest.MarkDecorator:
    """Skip unless ``tool`` is installed (CI installs them all)."""
    return pytest.mark.skipif(shutil.which(tool) is None and not os.environ.get("CI"),
                              reason=f"{tool} not installed")
