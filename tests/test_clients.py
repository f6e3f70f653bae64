"""``tcpkit reverse``, ``tcpkit factor`` and ``tcpkit services`` as real processes (SPEC §2.2)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.net import most_buffered
from helpers.numbers import semiprime
from helpers.servers import Server, run, script, start_server
from tcpkit import __version__, factorize
from tcpkit.services import factor as factor_service
from tcpkit.serving.guards.gate import LINGER_BYTES
from tcpkit.testing import running

TCPKIT = script("tcpkit")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One reverse and one factor service for every test of this module."""
    started = start_server([*TCPKIT, "serve", "--listen", "reverse=127.0.0.1:0",
                            "--listen", "factor=127.0.0.1:0"], services=2)
    yield started
    assert started.stop() == 0
    assert "Traceback" not in started.stderr()


def reverse(server: Server, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run([*TCPKIT, "reverse", f"127.0.0.1:{server.ports['reverse']}", *args], stdin)


def factor(server: Server, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return run([*TCPKIT, "factor", "-s", f"127.0.0.1:{server.ports['factor']}", *args], stdin)


def no_traceback(result: subprocess.CompletedProcess[bytes]) -> str:
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    return stderr


# -- tcpkit reverse ---------------------------------------------------------------


def test_reverse_stdin_to_stdout(server: Server) -> None:
    result = reverse(server, "hello\r\n\nan\u0303b\nlast".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "olleh\r\n\nbn\u0303a\ntsal\n".encode()
    assert result.stderr == b""


def test_reverse_a_big_file_returns_every_line_in_order(server: Server) -> None:
    lines = [b"%06d the quick brown fox %d" % (i, i * 7919) for i in range(100_000)]
    result = reverse(server, b"".join(line + b"\n" for line in lines))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(line[::-1] + b"\n" for line in lines)


def test_reverse_empty_input(server: Server) -> None:
    result = reverse(server, b"")
    assert (result.returncode, result.stdout) == (0, b"")


def test_reverse_stops_with_an_error_if_the_server_cuts_it_off() -> None:
    cut = start_server([*TCPKIT, "serve", "reverse", "--listen", "127.0.0.1:0",
                        "--max-line", "8"])
    try:
        result = run([*TCPKIT, "reverse", f"127.0.0.1:{cut.port}"],
                     b"ok\n" + b"x" * 100 + b"\nnever\n")
    finally:
        cut.stop()
    assert result.returncode == 1
    assert result.stdout == b"ko\nerror: line too long (max 8 bytes)\n"
    assert no_traceback(result).splitlines() == [
        "error: connection closed by the server after 2 of 3 replies"]


def test_reverse_takes_host_port_as_two_arguments(server: Server) -> None:
    port = str(server.ports["reverse"])
    result = run([*TCPKIT, "reverse", "127.0.0.1", port], b"two args\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"sgra owt\n", b"")
    result = run([*TCPKIT, "reverse", "localhost", "reverse"], b"x\n")  # names work too
    assert b"unrecognized arguments" not in result.stderr
    result = run([*TCPKIT, "reverse", f"127.0.0.1:{port}", port], b"x\n")
    assert result.returncode == 2
    assert no_traceback(result).splitlines()[-1] == (
        f"tcpkit reverse: error: give HOST PORT or HOST:PORT, not both: '127.0.0.1:{port}' "
        f"'{port}'")


def test_reverse_exits_1_on_an_error_reply_and_prints_it_in_order(server: Server) -> None:
    """Any line service's error reply (here factor's) is an error: SPEC §2's exit 1."""
    result = run([*TCPKIT, "reverse", f"127.0.0.1:{server.ports['factor']}"],
                 b"42\nabc\n12\n")
    assert result.returncode == 1
    assert result.stdout == b'2 3 7\nerror: not an integer: "abc"\n2 2 3\n'
    assert result.stderr == b""


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e300", "-inf", "1000001"])
@pytest.mark.parametrize("command", ["reverse", "factor"])
def test_bad_timeouts_are_usage_errors(server: Server, command: str, value: str) -> None:
    where = f"127.0.0.1:{server.ports[command]}"
    args = [where] if command == "reverse" else ["-s", where, "42"]
    result = run([*TCPKIT, command, f"--timeout={value}", *args], b"x\n")
    assert result.returncode == 2
    lines = no_traceback(result).splitlines()
    assert lines[-1] == (f"tcpkit {command}: error: argument --timeout: must be from 0 to "
                         f"1000000 seconds (0: no limit): '{value}'")
    assert result.stdout == b""


@pytest.mark.parametrize("command", ["reverse", "factor"])
def test_timeout_0_means_no_limit(server: Server, command: str) -> None:
    where = f"127.0.0.1:{server.ports[command]}"
    args = [where] if command == "reverse" else ["-s", where, "42"]
    result = run([*TCPKIT, command, "--timeout", "0", *args], b"abc\n")
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == (b"cba\n" if command == "reverse" else b"2 3 7\n")
    assert "0 waits forever" in " ".join(run([*TCPKIT, command, "--help"]).stdout.decode().split())


def test_reverse_timeout_counts_only_while_a_reply_is_awaited(server: Server) -> None:
    """A person who pauses longer than --timeout, every reply received, is not cut off."""
    client = subprocess.Popen(
        [*TCPKIT, "reverse", "--timeout", "1", f"127.0.0.1:{server.ports['reverse']}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write(b"a\n")
        client.stdin.flush()
        ready, _, _ = select.select([client.stdout], [], [], 20)
        assert ready and client.stdout.readline() == b"a\n"  # the first reply is in
        with pytest.raises(subprocess.TimeoutExpired):  # a quiet stdin: 3x --timeout
            client.wait(3)
        client.stdin.write(b"bc\n")
        out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert (client.returncode, out, err) == (0, b"cb\n", b"")


def test_factor_error_prefix_is_quoted_as_the_server_quotes() -> None:
    """No raw control byte reaches the terminal; one escaping rule on both sides."""
    with running(factor_service.SERVICE) as server:
        result = run([*TCPKIT, "factor", "-s", server.endpoint],
                     b"4\x00 \xff\xfe 4\xc3\xa9 \x1b[2J 6\n")
    assert result.returncode == 1
    assert result.stdout == b"2 3\n"
    lines = no_traceback(result).splitlines()
    assert lines == [
        '4\\x00: error: not an integer: "4\\x00"',
        '\\xff\\xfe: error: not an integer: "\\xff\\xfe"',
        '4\\u00e9: error: not an integer: "4\\u00e9"',
        '\\x1b[2J: error: not an integer: "\\x1b[2J"']
    assert all(32 <= byte < 127 or byte == 10 for byte in result.stderr)


def test_factor_help_says_stdin_is_read_as_gnu_factor_reads_it() -> None:
    shown = " ".join(run([*TCPKIT, "factor", "--help"]).stdout.decode().split())
    assert "as GNU factor reads them" in shown and "not line by line" in shown


def test_readme_reverse_example_uses_a_combining_tilde_and_is_real(server: Server) -> None:
    """The README's `añb` is n + U+0303 (not a precomposed ñ), and its transcript is true."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert "\u00f1" not in readme  # no precomposed ñ left anywhere
    assert "`an\u0303b` written with a combining" in readme and "`bn\u0303a`" in readme
    lines = readme.splitlines()
    at = next(i for i, line in enumerate(lines) if "| tcpkit reverse" in line)
    command = lines[at].strip().removeprefix("$ ").removesuffix("| tcpkit reverse")
    shown = [line.strip() for line in lines[at + 1:at + 3]]
    stdin = subprocess.run(["bash", "-c", command], capture_output=True, check=True).stdout
    assert "an\u0303b".encode() in stdin  # the example really sends a combining tilde
    result = reverse(server, stdin)
    assert (result.returncode, result.stdout.decode().splitlines()) == (0, shown)
    assert shown[1] == "bn\u0303a"


# -- tcpkit factor -----------------------------------------------------------------


def test_factor_arguments(server: Server) -> None:
    result = factor(server, "42", "1024", "1", "-42")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"2 3 7\n" + b"2 " * 9 + b"2\n\n-1 2 3 7\n"


def test_factor_stdin_tokens(server: Server) -> None:
    result = factor(server, stdin=b"42 12\n\n  7919\t15\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"2 3 7\n2 2 3\n7919\n3 5\n"


def test_factor_show_number_is_byte_identical_to_gnu_factor(server: Server) -> None:
    numbers = ["1", "2", "42", "0042", "+7", "1024", "7919", "65536", "999999999989",
               str(2**64 - 1), str(2**64 + 1), str(semiprime(30)),  # offloaded
               "123456789012345678901234567890", str(2**127 - 1), "1900" + "0" * 80]
    ours = factor(server, "--show-number", *numbers)
    # One GNU factor per number: coreutils 9.1 prints multi-precision results
    # ahead of buffered small ones when they share a command line.
    gnu = b"".join(run(["factor", n]).stdout for n in numbers)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == gnu


def test_factor_show_number_from_stdin_matches_gnu_factor(server: Server) -> None:
    stdin = b"".join(b"%d\n" % n for n in range(1, 2001))
    ours = factor(server, "--show-number", stdin=stdin)
    gnu = run(["factor"], stdin)
    assert (ours.returncode, ours.stdout) == (0, gnu.stdout)


def test_factor_error_lines_go_to_stderr_and_the_rest_continues(server: Server) -> None:
    result = factor(server, "42", "abc", "0", "12", "9" * 1001, "-0", "13")
    assert result.returncode == 1
    assert result.stdout == b"2 3 7\n2 2 3\n13\n"
    assert no_traceback(result).splitlines() == [
        'abc: error: not an integer: "abc"',
        "0: error: 0 has no prime factorization",
        "9" * 1001 + ": error: too many digits (max 1000)",
        "-0: error: 0 has no prime factorization",
    ]


def test_factor_arguments_stay_one_request_each(server: Server) -> None:
    """A line break inside an argument must not shift every later answer."""
    result = run([*TCPKIT, "factor", "-s", f"127.0.0.1:{server.ports['factor']}",
                  "6", "4\n2", "12", os.fsdecode(b"\xff"), "15"])
    assert result.returncode == 1
    assert result.stdout == b"2 3\n2 2 3\n3 5\n"
    assert no_traceback(result).splitlines() == [
        '4 2: error: not an integer: "4 2"', '\\xff: error: not an integer: "\\xff"']


def test_factor_many_numbers_pipelined_in_order(server: Server) -> None:
    numbers = list(range(10**12, 10**12 + 3000))
    result = factor(server, stdin=b"\n".join(b"%d" % n for n in numbers))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        " ".join(map(str, factorize(n))).encode() for n in numbers]
    assert result.stderr == b""  # no progress bar when stderr is not a terminal


# Past what the server discards after its error reply and all the kernel can buffer
# between the two (a server slow to read under load lets the kernels take it all),
# the client cannot finish sending: its write fails.
UNSENDABLE = LINGER_BYTES + most_buffered() + (2 << 20)  # the margin: what it read first


@pytest.mark.parametrize(("size", "tail"), [
    (300_000, b" 43"), (3_000_000, b" 43"), (UNSENDABLE, b""),
], ids=["300k-then-more", "3M-then-more", "unsendable-last"])
def test_factor_reports_a_server_that_hangs_up(size: int, tail: bytes) -> None:
    """An over-long number closes the connection; the client says so in one line.

    With a number after it, that one is never answered, whether or not the client
    could send it all.  As the last request, every request is answered unless the
    client could not finish sending, so that one is sized past what could be sent.
    """
    cut = start_server([*TCPKIT, "serve", "factor", "--listen", "127.0.0.1:0",
                        "--max-line", "100"])
    try:
        result = run([*TCPKIT, "factor", "-s", f"127.0.0.1:{cut.port}"],
                     b"42 " + b"1" * size + tail + b"\n")
    finally:
        cut.stop()
    assert result.returncode == 1
    assert result.stdout == b"2 3 7\n"
    lines = no_traceback(result).splitlines()
    assert lines[0].endswith("1: error: line too long (max 100 bytes)")
    assert lines[1].startswith("error: connection closed by the server")
    assert len(lines) == 2


def test_factor_progress_bar_only_on_a_terminal(server: Server) -> None:
    numbers = [str(n) for n in range(2, 152)]
    command = [*TCPKIT, "factor", "-s", f"127.0.0.1:{server.ports['factor']}", *numbers]
    main, terminal = pty.openpty()
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=terminal,
                                timeout=60, check=False)
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once everything is read
            while chunk := os.read(main, 65536):
                shown += chunk
    finally:
        os.close(main)
    assert result.returncode == 0
    assert result.stdout.splitlines()[:3] == [b"2", b"3", b"2 2"]
    assert b"150/150" in shown and b"#" * 30 in shown
    piped = run(command)  # the same with stderr on a pipe: no progress
    assert (piped.stdout, piped.stderr) == (result.stdout, b"")


# -- connection trouble ----------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound by us and not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", ["reverse", "factor"])
def test_refused_connection_is_one_line_and_exit_1(closed_port: int, command: str) -> None:
    where = f"127.0.0.1:{closed_port}"
    args = [where] if command == "reverse" else ["-s", where, "42"]
    result = run([*TCPKIT, command, *args], b"x\n")
    assert result.returncode == 1
    assert no_traceback(result).splitlines() == [
        f"error: cannot connect to {where}: Connection refused"]
    assert result.stdout == b""


@pytest.mark.parametrize("command", ["reverse", "factor"])
def test_unknown_host_is_one_line_and_exit_1(command: str) -> None:
    where = "no-such-host.invalid:7800"
    args = [where] if command == "reverse" else ["-s", where, "42"]
    result = run([*TCPKIT, command, "--timeout", "10", *args], b"x\n")
    assert result.returncode == 1
    (line,) = no_traceback(result).splitlines()
    assert line.startswith(f"error: cannot connect to {where}: ")


def test_connect_timeout_is_one_line_and_exit_1() -> None:
    """A listener whose accept queue is full never completes a new handshake."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for sock in fillers:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        try:
            result = run([*TCPKIT, "reverse", "--timeout", "1", f"127.0.0.1:{port}"], b"x\n")
        finally:
            for sock in fillers:
                sock.close()
    assert result.returncode == 1
    assert no_traceback(result).splitlines() == [
        f"error: cannot connect to 127.0.0.1:{port}: timed out"]


@pytest.mark.parametrize("command", ["reverse", "factor"])
def test_reply_timeout_is_one_line_and_exit_1(command: str) -> None:
    with socket.socket() as silent:  # accepts (in the kernel) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        args = [where] if command == "reverse" else ["-s", where, "42"]
        result = run([*TCPKIT, command, "--timeout", "1", *args], b"x\n")
    assert result.returncode == 1
    assert no_traceback(result).splitlines() == ["error: timed out waiting for a reply"]


@pytest.mark.parametrize("args", [
    ["reverse", "localhost:notaport"],
    ["reverse", "::1:7800"],
    ["factor", "-s", "host:99999", "42"],
    ["reverse", "--timeout", "soon"],
    ["factor", "--no-such-flag"],
])
def test_client_usage_errors_exit_2(args: list[str]) -> None:
    result = run([*TCPKIT, *args], b"")
    assert result.returncode == 2
    lines = no_traceback(result).splitlines()
    assert len([line for line in lines if "error:" in line]) == 1
    assert lines[-1].startswith("tcpkit")


# -- services, --version, --help ----------------------------------------------------


def test_services_lists_the_registry() -> None:
    result = run([*TCPKIT, "services"])
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["reverse", "7800/tcp"]
    assert lines[1].split()[:2] == ["factor", "7801/tcp"]
    assert "reversed" in lines[0] and "prime factors" in lines[1]


@pytest.mark.parametrize(("name", "line"), [
    ("echo", ["echo", "7/tcp", "(system)"]),
    ("reverse", ["reverse", "7800/tcp", "(tcpkit)"]),
    ("factor", ["factor", "7801/tcp", "(tcpkit)"]),
    ("22", ["22/tcp", "ssh"]),
])
def test_services_resolves_a_name(name: str, line: list[str]) -> None:
    result = run([*TCPKIT, "services", name])
    assert result.returncode == 0
    assert result.stdout.decode().split() == line


def test_services_unknown_name() -> None:
    """A lookup failure is a usage error, as for ``tcpkit serve NAME`` (test_ops_cli)."""
    result = run([*TCPKIT, "services", "no-such-service"])
    assert result.returncode == 2
    assert no_traceback(result).splitlines() == [
        "tcpkit services: error: unknown port or service name: 'no-such-service'"]


def test_version() -> None:
    result = run([*TCPKIT, "--version"])
    assert (result.returncode, result.stdout.decode()) == (0, f"tcpkit {__version__}\n")


@pytest.mark.parametrize("command", [
    [*TCPKIT], [*TCPKIT, "serve"], [*TCPKIT, "reverse"], [*TCPKIT, "factor"],
    [*TCPKIT, "services"], script("reverseS"), script("reverseC"), script("factorS"),
    script("factorC"),
], ids=["tcpkit", "serve", "reverse", "factor", "services", "reverseS", "reverseC",
        "factorS", "factorC"])
def test_help_on_every_command(command: list[str]) -> None:
    result = run([*command, "--help"], timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("usage: ")
    assert result.stderr == b""


def test_tcpkit_without_a_command_is_a_usage_error() -> None:
    result = run([*TCPKIT])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr.decode()

