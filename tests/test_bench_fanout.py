"""The fan-out benchmark's parts are correct: bench/fanout.c and the chat anchors.

Every anchor in ``bench/anchors/`` whose runtime is installed is checked twice:
line by line against the chat protocol (welcome, join and leave notices, NICK,
QUIT, no echo), and under ``fanout`` with 10 members for a second, which must
see every message reach every other member exactly once and in order.  A chat
room that drops, duplicates, echoes or corrupts a delivery on purpose
(``tests/peers/chat_faulty.py``) proves the driver notices.  Nothing here is
timed: speed is ``bench/run.py``'s business.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.net import free_ports
from helpers.servers import PEERS, Server, run, start_on_port

REPO = Path(__file__).resolve().parent.parent
ANCHORS = REPO / "bench" / "anchors"
MEMBERS = 10

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def installed(need: str) -> bool:
    if need.startswith("py:"):
        return importlib.util.find_spec(need[3:]) is not None
    return shutil.which(need) is not None


def anchor(name: str, argv: list[str], need: str = "") -> Any:
    return pytest.param(argv, id=name, marks=pytest.mark.skipif(
        bool(need) and not installed(need), reason=f"{need} not installed"))


CHAT_ANCHORS = [
    anchor("twisted", [sys.executable, str(ANCHORS / "chat_twisted.py")], "py:twisted"),
    anchor("asyncio", [sys.executable, str(ANCHORS / "chat_asyncio.py")]),
    anchor("uvloop", [sys.executable, str(ANCHORS / "chat_asyncio.py"), "--uvloop"],
           "py:uvloop"),
    anchor("node", ["node", str(ANCHORS / "chat_node.js")], "node"),
    anchor("perl", ["perl", str(ANCHORS / "chat_perl.pl")], "perl"),
]


@pytest.fixture(scope="module")
def fanout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("build") / "fanout"
    built = run(["gcc", "-O2", "-Wall", "-o", str(binary), str(REPO / "bench" / "fanout.c")])
    assert built.returncode == 0, built.stderr.decode()
    return binary


def start_room(argv: list[str]) -> Server:
    """``argv`` + a free port (an anchor takes its port as its first argument)."""
    port = free_ports()[0]
    return start_on_port([argv[0], argv[1], str(port), *argv[2:]], port)


@pytest.fixture
def room(request: pytest.FixtureRequest) -> Iterator[Server]:
    server = start_room(request.param)
    yield server
    server.stop(signal.SIGKILL)


def drive(fanout: Path, port: int, *extra: str) -> tuple[int, dict[str, Any], str]:
    """One short fanout run (10 members, 1 s after 0.2 s of warm-up)."""
    done = run([str(fanout), "--host", "127.0.0.1", "--port", str(port), "-m", str(MEMBERS),
                "-d", "1", "-w", "0.2", *extra], timeout=60)
    stderr = done.stderr.decode(errors="replace")
    assert done.stdout, f"fanout printed nothing (exit {done.returncode}): {stderr}"
    return done.returncode, json.loads(done.stdout), stderr


CHECKS = ("missing", "duplicates", "out_of_order", "echoed", "corrupt", "unexpected",
          "io_errors", "quit_missing")


@pytest.mark.parametrize("room", CHAT_ANCHORS, indirect=True)
def test_every_message_reaches_every_other_member_once_in_order(fanout: Path,
                                                                room: Server) -> None:
    code, result, stderr = drive(fanout, room.port)
    assert code == 0, (result, stderr, room.stderr())
    assert {check: result[check] for check in CHECKS} == dict.fromkeys(CHECKS, 0)
    assert result["errors"] == 0
    # A closed loop ends with nothing in flight: each message reached the 9 others.
    assert result["messages_total"] > 0
    assert result["deliveries_total"] == result["messages_total"] * (MEMBERS - 1)
    assert 0 < result["requests"] == result["deliveries"] <= result["deliveries_total"]
    assert result["rps"] == pytest.approx(result["deliveries"] / result["seconds"], rel=1e-3)


class Member:
    """One chat client, reading line by line with a bounded wait."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError(f"closed; unread {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\n")

    def closed(self) -> bool:
        return self.buf == b"" and self.sock.recv(4096) == b""


@pytest.mark.parametrize("room", CHAT_ANCHORS, indirect=True)
def test_anchor_speaks_the_chat_protocol(room: Server) -> None:
    ann = Member(room.port)
    welcome = re.fullmatch(rb"welcome (guest\d+)", ann.line())
    assert welcome, "no welcome"
    a = welcome.group(1)
    bob = Member(room.port)
    welcome = re.fullmatch(rb"welcome (guest\d+)", bob.line())
    assert welcome and welcome.group(1) != a, "names must be unique"
    b = welcome.group(1)
    assert ann.line() == b"* " + b + b" joined"

    ann.send(b"hello, room")
    assert bob.line() == a + b": hello, room"
    bob.send(b"NICK bob")
    assert bob.line() == b"you are now bob"
    ann.send(b"NICK bob")
    assert ann.line() == b"error: nickname taken"
    bob.send(b"hi ann")
    # Ann's own "hello, room" never came back to her: Bob's line is her next one.
    assert ann.line() == b"bob: hi ann"

    ann.send(b"QUIT")
    assert ann.line() == b"bye"
    assert ann.closed()
    assert bob.line() == b"* " + a + b" left"
    bob.send(b"alone now")  # nobody to hear it, and nothing comes back
    bob.send(b"QUIT")
    assert bob.line() == b"bye"
    assert bob.closed()


@pytest.mark.parametrize(("fault", "check"), [
    ("drop", "missing"), ("duplicate", "duplicates"), ("echo", "echoed"),
    ("corrupt", "corrupt")])
def test_fanout_notices_a_broken_room(fanout: Path, fault: str, check: str) -> None:
    server = start_room([sys.executable, str(PEERS / "chat_faulty.py"), fault])
    try:
        code, result, stderr = drive(fanout, server.port, "--patience", "1")
    finally:
        server.stop(signal.SIGKILL)
    assert code == 1, (result, stderr)
    assert result[check] > 0 and result["errors"] >= result[check], result
    assert stderr.startswith("fanout: member"), stderr  # says which member saw what


def test_fanout_refuses_bad_usage_and_an_absent_room(fanout: Path) -> None:
    done = run([str(fanout), "-m", "1"])
    assert done.returncode == 2 and b"usage: fanout" in done.stderr
    port = free_ports()[0]  # nothing listens there
    done = run([str(fanout), "--port", str(port), "-d", "1"], timeout=30)
    assert done.returncode == 2 and b"cannot connect member 0" in done.stderr
    assert done.stdout == b""


def test_run_py_knows_the_fanout_cell() -> None:
    """bench/run.py lists the cell and every anchor (its --help names them)."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("fanout-m100", "chat-twisted", "chat-asyncio", "chat-uvloop", "chat-node",
                 "chat-perl"):
        assert name in done.stdout
