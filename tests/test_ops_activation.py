"""systemd socket activation (LISTEN_FDS/LISTEN_PID), sd_notify readiness, and
``--inetd`` (one connection on stdin/stdout), each with real processes."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.net import exchange, free_ports, recv_until_closed
from helpers.servers import needs, run, script, start_inetd, start_server


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


# Exec a command as systemd does: the given fds moved to 3, 4, ...; LISTEN_PID = its pid.
AS_SYSTEMD = """
import os, sys
count = int(sys.argv[1])
copies = [os.dup(int(fd)) for fd in sys.argv[2:2 + count]]
for index, fd in enumerate(copies):
    if fd != 3 + index:
        os.dup2(fd, 3 + index)
    os.set_inheritable(3 + index, True)
os.environ["LISTEN_FDS"] = str(count)
os.environ["LISTEN_PID"] = str(os.getpid())
command = sys.argv[2 + count:]
os.execv(command[0], command)
"""


def as_systemd(socks: list[socket.socket], command: list[str]) -> list[str]:
    return [sys.executable, "-c", AS_SYSTEMD, str(len(socks)),
            *(str(s.fileno()) for s in socks), *command]


def activated(args: list[str], socks: list[socket.socket], names: str | None = None,
              env: dict[str, str] | None = None, services: int = 1):
    variables = dict(env or {})
    if names is not None:
        variables["LISTEN_FDNAMES"] = names
    return start_server(as_systemd(socks, [*script("tcpkit"), "serve", *args]),
                        services=services, env=variables,
                        pass_fds=tuple(s.fileno() for s in socks))


def test_serves_inherited_socket_and_notifies_ready(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(15)
    with listening_socket() as inherited:
        port = inherited.getsockname()[1]
        server = activated(["reverse"], [inherited],
                           env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        assert server.ports == {"reverse": port}  # served on the socket we made
        assert notify.recv(100) == b"READY=1"
        assert exchange(port, b"activated\n") == b"detavitca\n"
        assert server.stop() == 0
        assert notify.recv(100) == b"STOPPING=1"
    finally:
        server.stop(signal.SIGKILL)
        notify.close()


def test_named_sockets_go_to_their_services() -> None:
    with listening_socket() as one, listening_socket() as two:
        server = activated([], [one, two], names="factor:reverse", services=2)
        ports = {"factor": one.getsockname()[1], "reverse": two.getsockname()[1]}
    try:
        assert server.ports == ports
        assert exchange(ports["factor"], b"42\n") == b"2 3 7\n"
        assert exchange(ports["reverse"], b"42\n") == b"24\n"
    finally:
        server.stop()


def test_listen_with_activation_is_a_usage_error() -> None:
    with listening_socket() as inherited:
        done = subprocess.run(
            as_systemd([inherited], [*script("tcpkit"), "serve", "reverse", "--listen",
                                     "127.0.0.1:0"]),
            capture_output=True, timeout=30, pass_fds=[inherited.fileno()])
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "tcpkit serve: error: --listen cannot be used with socket activation "
        "(LISTEN_FDS is set: the sockets come from systemd)"]


@needs("systemd-socket-activate")
def test_systemd_socket_activate_with_named_sockets() -> None:
    factor_port, reverse_port = free_ports(2)
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{factor_port}", "-l",
         f"127.0.0.1:{reverse_port}", "--fdname=factor:reverse", *script("tcpkit"), "serve",
         "reverse", "factor"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the first client starts tcpkit, which gets both sockets by name
        assert exchange_when_up(factor_port, b"42\n") == b"2 3 7\n"
        assert exchange_when_up(reverse_port, b"42\n") == b"24\n"
    finally:
        activator.terminate()
        activator.wait(15)


def exchange_when_up(port: int, payload: bytes) -> bytes:
    deadline = time.monotonic() + 15
    while True:
        try:
            return exchange(port, payload)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "nothing listens"
            time.sleep(0.05)


# -- inetd ------------------------------------------------------------------------


def test_inetd_serves_one_connection_on_stdin() -> None:
    client, process = start_inetd("reverse")
    with client:
        client.sendall(b"hello\nworld\r\n")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_closed(client) == b"olleh\ndlrow\r\n"
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert b"accept 127.0.0.1:" in stderr and b"(2 lines" in stderr


def test_inetd_with_stderr_on_the_socket_keeps_logs_out_of_the_stream() -> None:
    client, process = start_inetd("factor", stderr_on_socket=True)
    with client:
        client.sendall(b"42\nabc\n")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_closed(client) == b'2 3 7\nerror: not an integer: "abc"\n'
    assert process.wait(30) == 0


# socat's own line (-d -d) with the port it bound: port 0, so no other program can
# take the port between a probe and socat's bind.
SOCAT_LISTENING = re.compile(r" listening on AF=\d+ \S+:(?P<port>\d+)")


@needs("socat")
def test_inetd_under_socat() -> None:
    command = " ".join([*script("tcpkit"), "serve", "--inetd", "reverse"])
    # -t: how long socat waits for the command's replies once the client has sent
    # EOF.  Its default, 0.5 s, is less than a Python start on a busy machine: the
    # replies were lost.  The command exits once it has answered, so this only bounds.
    socat = start_server(["socat", "-d", "-d", "-t", "30",
                          "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork", f"EXEC:{command}"],
                         announces=SOCAT_LISTENING)
    try:
        assert exchange(socat.port, b"first\n") == b"tsrif\n"
        assert exchange(socat.port, b"second\nthird") == b"dnoces\ndriht\n"
    finally:
        socat.stop()


def test_inetd_without_a_socket_is_one_line() -> None:
    done = run([*script("tcpkit"), "serve", "--inetd", "reverse"], stdin=b"x\n")
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "tcpkit serve: error: --inetd needs a connected socket on stdin (run it from inetd, "
        "xinetd, or a systemd socket unit with Accept=yes)"]


@pytest.fixture(autouse=True)
def _no_inherited_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)
