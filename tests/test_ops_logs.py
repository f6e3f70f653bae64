"""Logs: ``--log-format json`` (one object a line with the connection's fields),
``--log-level``, ``--resolve-names`` (reverse DNS off the event loop)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import pytest

from helpers.net import exchange, free_ports
from helpers.servers import script


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
