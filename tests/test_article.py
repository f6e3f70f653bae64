"""The article's four programs, transcripts line for line (SPEC §2.3)."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from helpers.net import LOOPBACKS, connect, recv_until_closed
from helpers.servers import Server, needs_ipv6, run, script, start_server
from tcpkit import __version__

LINE_TIMEOUT = 10.0


def host_name(ip: str) -> str:
    """What the servers print for a client at ``ip``: its reverse-DNS name, else the IP."""
    try:
        return socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)[0]
    except OSError:
        return ip


def shown(name: str, port: int) -> str:
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


class Transcript:
    """A server process's stdout, line by line, as it is printed."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = server.process.stdout
        assert stdout is not None

        def read() -> None:
            for raw in stdout:
                self.lines.put(raw.decode().rstrip("\n"))

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def next(self) -> str:
        try:
            return self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no transcript line; stderr:\n{self.server.stderr()}") from None

    def rest(self) -> list[str]:
        """Every line left, once the process has ended."""
        self.server.process.wait(LINE_TIMEOUT)
        self.reader.join(LINE_TIMEOUT)
        return list(self.lines.queue)


def start_article_server(name: str) -> tuple[Server, Transcript]:
    server = start_server([*script(name), "0"], stdout=subprocess.PIPE)
    return server, Transcript(server)


@pytest.fixture
def reverse_s() -> Iterator[tuple[Server, Transcript]]:
    server, transcript = start_article_server("reverseS")
    yield server, transcript
    server.stop(signal.SIGKILL)


@pytest.fixture
def factor_s() -> Iterator[tuple[Server, Transcript]]:
    server, transcript = start_article_server("factorS")
    yield server, transcript
    server.stop(signal.SIGKILL)


def test_reverse_server_transcript(reverse_s: tuple[Server, Transcript]) -> None:
    server, transcript = reverse_s
    assert [transcript.next() for _ in range(3)] == ["socket", "bind", "listen"]
    for host in LOOPBACKS:
        with socket.create_connection((host, server.port), timeout=10) as sock:
            port = sock.getsockname()[1]
            sock.sendall(b"hello\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_closed(sock) == b"olleh\n"
        handle = shown(host_name(host), port)
        assert transcript.next() == f"accept {handle}"
        assert transcript.next() == "close HANDLER"  # literally, as the article prints it
    with connect(server.port) as still_there:  # ^C with a client connected
        still_there.sendall(b"bye\n")
        assert recv_until_closed(still_there, limit=4) == b"eyb\n"
        handle = shown(host_name("127.0.0.1"), still_there.getsockname()[1])
        assert transcript.next() == f"accept {handle}"
        assert server.stop(signal.SIGINT) == 0  # ^C ends it cleanly
        assert recv_until_closed(still_there) == b""  # the server closed it
    assert transcript.rest() == ["close HANDLER"]
    assert "Traceback" not in server.stderr()
    assert "stopped after" in server.stderr()


def test_reverse_server_serves_clients_at_once(reverse_s: tuple[Server, Transcript]) -> None:
    server, transcript = reverse_s
    with connect(server.port) as first, connect(server.port) as second:
        second.sendall(b"second\n")
        second.shutdown(socket.SHUT_WR)
        assert recv_until_closed(second) == b"dnoces\n"  # while the first is still open
        first.sendall(b"first\n")
        first.shutdown(socket.SHUT_WR)
        assert recv_until_closed(first) == b"tsrif\n"
    lines = [transcript.next() for _ in range(7)]
    assert lines[:3] == ["socket", "bind", "listen"]
    assert sorted(line.split()[0] for line in lines[3:]) == ["accept"] * 2 + ["close"] * 2


def test_reverse_client_transcript(reverse_s: tuple[Server, Transcript]) -> None:
    server, _ = reverse_s
    result = run([*script("reverseC"), "localhost", str(server.port)], b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "socket", "bind", "connect", "olleh", "dlrow", "close"]


@needs_ipv6
def test_reverse_client_over_ipv6_without_a_final_lf(reverse_s: tuple[Server, Transcript]) -> None:
    server, _ = reverse_s
    result = run([*script("reverseC"), "::1", str(server.port)], b"abc")  # no final LF
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"socket\nbind\nconnect\ncba\nclose\n"


def test_factor_server_and_client_transcripts(factor_s: tuple[Server, Transcript]) -> None:
    server, transcript = factor_s
    assert transcript.next() == f"Listening on {server.port}"
    result = run([*script("factorC"), "localhost", str(server.port), "42"])
    assert (result.returncode, result.stdout, result.stderr) == (0, b"2 3 7\n", b"")
    assert transcript.next() == f"accept {host_name('127.0.0.1')}"
    result = run([*script("factorC"), "127.0.0.1", str(server.port), "1024"])
    assert result.stdout == b"2 2 2 2 2 2 2 2 2 2\n"
    assert transcript.next() == f"accept {host_name('127.0.0.1')}"
    assert server.stop(signal.SIGTERM) == 0
    assert transcript.rest() == []
    assert "Traceback" not in server.stderr()


def test_factor_client_error_reply(factor_s: tuple[Server, Transcript]) -> None:
    server, _ = factor_s
    result = run([*script("factorC"), "localhost", str(server.port), "abc"])
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == ['abc: error: not an integer: "abc"']


def test_factor_client_sends_one_line(factor_s: tuple[Server, Transcript]) -> None:
    server, _ = factor_s
    result = run([*script("factorC"), "localhost", str(server.port), "4\n2"])
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b'4 2: error: not an integer: "4 2"\n'


@pytest.mark.parametrize(("program", "args"), [
    ("reverseC", ["localhost"]),
    ("reverseC", ["localhost", "nosuchport"]),
    ("factorC", ["localhost", "7801"]),
    ("factorC", ["localhost", "99999", "42"]),
    ("reverseS", ["nosuchport"]),
    ("factorS", ["1", "2"]),
])
def test_usage_errors(program: str, args: list[str]) -> None:
    result = run([*script(program), *args])
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"usage: {USAGES[program]}"


USAGES = {"reverseC": "reverseC HOST PORT", "factorC": "factorC HOST PORT N",
          "reverseS": "reverseS [PORT]", "factorS": "factorS [PORT]"}


@pytest.mark.parametrize("program", ["reverseS", "reverseC", "factorS", "factorC"])
def test_version_is_an_option_not_a_port(program: str) -> None:
    result = run([*script(program), "--version"], timeout=30)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode() == f"{program} (tcpkit {__version__})\n"


@pytest.mark.parametrize("program", ["reverseS", "reverseC", "factorS", "factorC"])
def test_unknown_option_is_a_usage_error(program: str) -> None:
    result = run([*script(program), "--bogus"], timeout=30)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "error: unknown option '--bogus' (options: --help, --version)",
        f"usage: {USAGES[program]}"]


def test_factor_client_takes_a_negative_number(factor_s: tuple[Server, Transcript]) -> None:
    server, _ = factor_s
    result = run([*script("factorC"), "127.0.0.1", str(server.port), "-42"])
    assert (result.returncode, result.stdout) == (0, b"-1 2 3 7\n")


@pytest.mark.parametrize("program", ["reverseC", "factorC"])
def test_clients_refused_is_one_line(program: str) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        extra = ["42"] if program == "factorC" else []
        result = run([*script(program), "127.0.0.1", str(port), *extra], b"x\n")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines == [f"error: cannot connect to 127.0.0.1:{port}: Connection refused"]


@pytest.mark.parametrize("program", ["reverseS", "factorS"])
def test_servers_port_in_use(program: str) -> None:
    with socket.socket(socket.AF_INET6) as taken:  # every interface, like the servers
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run([*script(program), str(port)], timeout=30)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"error: cannot listen on :{port}: Address already in use"
