"""Logs: ``--log-format json`` (one object a line with the connection's fields),
``--log-level``, ``--resolve-names`` (reverse DNS off the event loop)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time

import pytest

from helpers.net import exchange, free_ports
from helpers.servers import script
from tcpkit.services import reverse
from tcpkit.serving.config import Limits
from tcpkit.serving.observe.events import Observer
from tcpkit.testing import running


def test_json_log_lines(serve) -> None:
    server = serve("reverse", "--log-format", "json")
    assert exchange(server.port, b"one\ntwo\n") == b"eno\nowt\n"
    server.stop()
    entries = [json.loads(line) for line in server.stderr_lines]  # every line is JSON
    assert all({"time", "level", "event", "message"} <= set(e) for e in entries)
    listening = next(e for e in entries if e["event"] == "listening")
    assert listening["address"] == f"127.0.0.1:{server.port}"
    assert listening["service"] == "reverse" and listening["mode"] == "async"
    accept = next(e for e in entries if e["event"] == "accept")
    close = next(e for e in entries if e["event"] == "close")
    assert accept["peer"] == close["peer"] and accept["peer"].startswith("127.0.0.1:")
    assert (accept["service"], close["service"], close["lines"]) == ("reverse", "reverse", 2)
    assert isinstance(close["duration"], float) and close["duration"] >= 0
    assert close["level"] == "info" and close["message"].startswith("close 127.0.0.1:")
    assert entries[-1]["event"] == "stopped"


def test_log_level_warning_hides_the_access_log() -> None:
    port = free_ports()[0]
    process = subprocess.Popen([*script("tcpkit"), "serve", "reverse", "--listen",
                                f"127.0.0.1:{port}", "--log-level", "warning",
                                "--max-connections", "1"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:  # no "Listening on" line at this level: wait for the port
            try:
                first = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        with first:
            first.sendall(b"abc\n")
            assert first.recv(10) == b"cba\n"
            assert exchange(port, b"x\n") == b"error: server busy\n"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines  # only the refusal: no Listening, accept, close, summary
    assert re.search(r"warning: refused 127\.0\.0\.1:\d+ \(reverse\): server busy$", lines[0])


def test_resolve_names(serve) -> None:
    try:
        name = socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)[0]
    except OSError:
        pytest.skip("127.0.0.1 has no reverse name here")
    server = serve("reverse", "--resolve-names")
    assert exchange(server.port, b"x\ny\n") == b"x\ny\n"
    server.wait_for_stderr(rf"accept {name}:\d+ \(reverse\)")
    server.wait_for_stderr(rf"close {name}:\d+ \(2 lines")


@pytest.mark.parametrize("mode", ["async", "thread", "fork", "iterative"])
def test_close_lines_say_why_the_server_closed(serve, mode: str) -> None:
    """Idle timeouts and over-long lines are named on their client's own close line."""
    server = serve("reverse", "--mode", mode, "--idle-timeout", "1", "--max-line", "8")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(b"ab\n")
        assert idle.recv(10) == b"ba\n"
        idle_port = idle.getsockname()[1]
        assert idle.recv(10) == b""  # closed by the server once idle
    server.wait_for_stderr(rf"close 127\.0\.0\.1:{idle_port} \(1 lines, [\d.]+ s, idle timeout\)")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as long:
        long_port = long.getsockname()[1]
        long.sendall(b"x" * 20 + b"\n")
        assert long.recv(100) == b"error: line too long (max 8 bytes)\n"
    server.wait_for_stderr(rf"close 127\.0\.0\.1:{long_port} \(\d+ lines, [\d.]+ s, "
                           r"line too long\)")
    assert exchange(server.port, b"ok\n") == b"ko\n"
    server.stop()
    plain = re.findall(r"close 127\.0\.0\.1:\d+ \(1 lines, [\d.]+ s\)$", server.stderr(), re.M)
    assert len(plain) == 1  # a client that left by itself gets no reason


def test_json_close_has_a_reason_only_when_the_server_closed(serve) -> None:
    server = serve("reverse", "--log-format", "json", "--idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        assert idle.recv(10) == b""  # silent: closed once idle
    server.wait_for_stderr('"reason": "idle_timeout"')
    assert exchange(server.port, b"x\n") == b"x\n"
    server.stop()
    closes = [entry for entry in map(json.loads, server.stderr_lines)
              if entry["event"] == "close"]
    assert [entry.get("reason") for entry in closes] == ["idle_timeout", None]
    assert closes[0]["message"].endswith(", idle timeout)")


class OnlyClosed(Observer):
    """An observer written before close reasons existed: it overrides closed() only."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.done = threading.Event()

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        self.seen.append(port)
        self.done.set()


@pytest.mark.parametrize("mode", ["async", "thread"])
def test_an_observer_without_reasons_still_hears_every_close(mode: str) -> None:
    observer = OnlyClosed()
    with running(reverse.SERVICE, Limits(idle_timeout=1), observer=observer,
                 mode=mode) as server, \
            socket.create_connection((server.host, server.port), timeout=10) as idle:
        assert idle.recv(10) == b""  # closed by the server once idle
        assert observer.done.wait(10)
        assert observer.seen == [idle.getsockname()[1]]
