"""SPEC §6: a third-party service registered through the ``tcpkit.services`` entry points.

The README's example package (examples/shout) is made importable the way pip
installs it — the module plus a ``*.dist-info`` folder with its
``entry_points.txt`` on the path — so tcpkit finds it exactly as it would find
an installed plug-in, and a real ``tcpkit serve shout`` process serves it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from helpers.examples import EXAMPLES, install_examples, load_example
from helpers.net import exchange
from helpers.servers import run, script, start_server
from tcpkit import INETSocket
from tcpkit.testing import RunningServer

EXAMPLE = EXAMPLES / "shout"


def install_example(target: Path) -> dict[str, str]:
    return install_examples(target, "shout")


def test_example_is_under_20_lines() -> None:
    code = [line for line in (EXAMPLE / "shout.py").read_text().splitlines() if line.strip()]
    assert len(code) < 20


def test_plugin_is_listed_and_resolved(tmp_path: Path) -> None:
    env = {**os.environ, **install_example(tmp_path)}
    listed = run_with_env([*script("tcpkit"), "services"], env)
    assert "shout" in listed and "7802/tcp" in listed
    assert "7802/tcp" in run_with_env([*script("tcpkit"), "services", "shout"], env)


def test_plugin_is_served_with_errors_and_limits(tmp_path: Path) -> None:
    env = install_example(tmp_path)
    server = start_server([*script("tcpkit"), "serve", "shout", "--listen", "127.0.0.1:0",
                           "--max-line", "16"], env=env)
    try:
        assert "(shout, mode=async)" in server.stderr()
        assert exchange(server.port, b"hello\r\n\nend") == (
            b"HELLO\r\nerror: nothing to shout\nEND\n")
        too_long = exchange(server.port, b"ok\n" + b"x" * 40 + b"\n")
        assert too_long == b"OK\nerror: line too long (max 16 bytes)\n"
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def run_with_env(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, timeout=60, check=True)
    return done.stdout.decode()


def test_unknown_service_is_a_usage_error() -> None:
    done = run([*script("tcpkit"), "serve", "nosuch"])
    assert done.returncode == 2
    assert b"unknown service 'nosuch'" in done.stderr
    assert b"Traceback" not in done.stderr


def test_readme_fixture_example(tcpkit_server: Callable[..., RunningServer]) -> None:
    """The README's test of the example service, through the pytest fixture."""
    shout = load_example("shout")
    server = tcpkit_server(shout.SERVICE)
    with INETSocket.connect(server.endpoint) as sock:
        sock.print("hi", "")
        assert sock.readline() == b"HI\n"
        assert sock.readline() == b"error: nothing to shout\n"
