"""Unix sockets: ``--listen unix:/path`` served to tcpkit's clients and ``nc -U``;
the socket file is removed on exit, a stale one is replaced, a live one is not."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest

from helpers.servers import Server, Servers, needs, run, script


@pytest.fixture
def serve_unix():
    """Start ``tcpkit serve SERVICE --listen unix:PATH``; wait for its Listening line."""
    servers = Servers()

    def start(service: str, path: Path) -> Server:
        listening = re.compile(rf"Listening on unix:{re.escape(str(path))} "
                               rf"\((?P<service>{service}), mode=async\)")
        return servers.command([*script("tcpkit"), "serve", service, "--listen", f"unix:{path}"],
                               announces=listening)

    yield start
    servers.stop_all()


def test_unix_socket_with_tcpkit_clients(serve_unix, tmp_path: Path) -> None:
    path = tmp_path / "reverse.sock"
    server = serve_unix("reverse", path)
    assert stat.S_ISSOCK(path.stat().st_mode)
    done = run([*script("tcpkit"), "reverse", f"unix:{path}"], stdin=b"over unix\n")
    assert (done.returncode, done.stdout) == (0, b"xinu revo\n")
    server.wait_for_stderr(r"close unix \(1 lines")
    assert server.stop() == 0
    assert not path.exists()  # removed on exit


def test_factor_client_over_unix(serve_unix, tmp_path: Path) -> None:
    path = tmp_path / "factor.sock"
    serve_unix("factor", path)
    done = run([*script("tcpkit"), "factor", "-s", f"unix:{path}", "42", "97"])
    assert (done.returncode, done.stdout) == (0, b"2 3 7\n97\n")


@needs("nc")
def test_nc_unix(serve_unix, tmp_path: Path) -> None:
    path = tmp_path / "nc.sock"
    serve_unix("reverse", path)
    done = run(["nc", "-N", "-U", str(path)], stdin=b"netcat\n", timeout=20)
    assert done.stdout == b"tacten\n", done.stderr


def test_stale_socket_file_is_replaced_live_one_is_not(serve_unix, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(str(path))  # a server that died without cleaning up
    crashed.close()
    assert path.exists()
    serve_unix("reverse", path)
    done = run([*script("tcpkit"), "reverse", f"unix:{path}"], stdin=b"fresh\n")
    assert done.stdout == b"hserf\n"
    second = run([*script("tcpkit"), "serve", "reverse", "--listen", f"unix:{path}"])
    assert second.returncode == 1
    assert second.stderr.decode().splitlines()[-1] == (
        f"error: cannot listen on unix:{path}: Address already in use")
    assert run([*script("tcpkit"), "reverse", f"unix:{path}"], stdin=b"x\n").stdout == b"x\n"


def test_regular_file_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious\n")
    done = run([*script("tcpkit"), "serve", "reverse", "--listen", f"unix:{path}"])
    assert done.returncode == 1 and b"Address already in use" in done.stderr
    assert path.read_text() == "precious\n"
    assert os.path.isfile(path)
