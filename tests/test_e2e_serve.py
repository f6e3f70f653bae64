"""Scope: the ``tcpkit serve`` command itself -- options, endpoints, replies, exit codes, messages.

Real processes on real loopback sockets, in the default mode (SPEC §2.1, §3,
§4, §7).  How every serving mode behaves is test_modes'; the operator features
(TLS, metrics, logs, per-IP) in every mode test_allmodes' (each alone:
test_ops_*); faults of the server (kill -9) and hostile clients
test_reliability_*'.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.net import LOOPBACKS, connect, exchange, recv_lines, recv_until_closed
from helpers.numbers import long_semiprime, reply_for, semiprime
from helpers.processes import factor_workers, wait_asleep, wait_gone, wait_working
from helpers.servers import LISTENING, Server, needs, run, script
from tcpkit.serving.run import MODES

Serve = Callable[..., Server]


# -- starting -------------------------------------------------------------


def test_no_service_named_runs_both(serve: Serve) -> None:
    server = serve("--listen", "reverse=127.0.0.1:0", "--listen", "factor=127.0.0.1:0",
                   services=2)
    assert set(server.ports) == {"reverse", "factor"}
    assert exchange(server.ports["reverse"], b"hello\n") == b"olleh\n"
    assert exchange(server.ports["factor"], b"42\n") == b"2 3 7\n"
    lines = [line for line in server.stderr_lines if "Listening on" in line]
    assert len(lines) == 2
    for line in lines:
        found = LISTENING.search(line)
        assert found is not None
        assert found.group(1) == "127.0.0.1" and found.group(4) == "async"
        assert int(found.group(2)) == server.ports[found.group(3)] > 0


def test_default_bind_is_dual_stack(serve: Serve) -> None:
    server = serve("reverse", "--listen", "0")
    found = LISTENING.search(server.stderr())
    assert found is not None and found.group(1) == ("[::]" if socket.has_ipv6 else "0.0.0.0")
    for host in LOOPBACKS:
        with socket.create_connection((host, server.port), timeout=10) as sock:
            sock.sendall(b"dual\n")
            assert recv_lines(sock, 1) == [b"laud\n"]
        shown = re.escape(f"[{host}]" if ":" in host else host)  # not ::ffff:127.0.0.1
        server.wait_for_stderr(rf"accept {shown}:\d+ \(reverse\)")


def test_unix_socket_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "rev.sock"
    log = tmp_path / "stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*script("tcpkit"), "serve", "reverse", "--listen", f"unix:{path}"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        while f"Listening on unix:{path} (reverse" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(b"unix\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_closed(sock) == b"xinu\n"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    assert "Traceback" not in log.read_text()


# -- the protocols ----------------------------------------------------------


def test_reverse_examples(serve: Serve) -> None:
    server = serve("reverse")
    request = "hello\r\n\nan\u0303b\n\U0001F44D\U0001F3FD!\U0001F1EB\U0001F1F7\n".encode()
    reply = "olleh\r\n\nbn\u0303a\n\U0001F1EB\U0001F1F7!\U0001F44D\U0001F3FD\n".encode()
    assert exchange(server.port, request + b"a\xffb\n") == reply + b"b\xffa\n"


def test_final_line_without_lf_gets_one(serve: Serve) -> None:
    server = serve("reverse", "factor", services=2)
    assert exchange(server.ports["reverse"], b"one\ntwo") == b"eno\nowt\n"
    assert exchange(server.ports["factor"], b"42") == b"2 3 7\n"
    assert exchange(server.ports["reverse"], b"") == b""


def test_half_close_gets_every_reply_then_close(serve: Serve) -> None:
    server = serve("reverse")
    with connect(server.port) as sock:
        sock.sendall(b"first\n")
        assert recv_lines(sock, 1) == [b"tsrif\n"]
        sock.sendall(b"second\nthird\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b"dnoces\ndriht\n"


def test_pipelining_10000_lines_in_order(serve: Serve) -> None:
    server = serve("reverse")
    lines = [f"line {i} \u03b1\u03b2" if i % 7 else f"{i}\r" for i in range(10_000)]
    payload = "".join(line + "\n" for line in lines).encode()
    # Greek letters are single clusters, so code-point reversal is the answer;
    # every seventh line is CRLF-terminated (and not ASCII-only blocks: slow path).
    expected = "".join(line.rstrip("\r")[::-1] + ("\r\n" if line.endswith("\r") else "\n")
                       for line in lines).encode()
    assert exchange(server.port, payload) == expected


def test_factor_pipelining_keeps_order_around_offloaded_numbers(serve: Serve) -> None:
    server = serve("factor")
    big = semiprime(40)  # above 2**64: goes to a worker process
    numbers = [big + i if i % 1000 == 0 else i + 2 for i in range(10_000)]
    numbers[5] = big
    reply = exchange(server.port, b"".join(b"%d\n" % n for n in numbers))
    assert reply == b"".join(reply_for(n) for n in numbers)


def test_factor_examples_and_errors_keep_the_connection(serve: Serve) -> None:
    server = serve("factor")
    exchanges = [
        (b"42\n", b"2 3 7\n"),
        (b"abc\n", b'error: not an integer: "abc"\n'),
        (b"1024\r\n", b"2 2 2 2 2 2 2 2 2 2\r\n"),
        (b"0\n", b"error: 0 has no prime factorization\n"),
        (b"7919\n", b"7919\n"),
        (b"9" * 1001 + b"\n", b"error: too many digits (max 1000)\n"),
        (b"1\n", b"\n"),
        ("\uff14\uff12\n".encode(), b'error: not an integer: "\\uff14\\uff12"\n'),
        (b"-42\n", b"-1 2 3 7\n"),
        (b"\xff\xfe\x00\n", b'error: not an integer: "\\xff\\xfe\\x00"\n'),
        (b" +0042 \n", b"2 3 7\n"),
    ]
    with connect(server.port) as sock:
        for request, expected in exchanges:
            sock.sendall(request)
            assert recv_lines(sock, 1) == [expected], request
    assert "Traceback" not in server.stderr()


def test_bad_input_costs_nothing_else(serve: Serve) -> None:
    """Binary junk, mid-request disconnects and resets: answered or ignored, never fatal."""
    server = serve("reverse", "factor", services=2)
    junk = bytes(range(256)) * 4
    for service in ("reverse", "factor"):
        port = server.ports[service]
        reply = exchange(port, junk.replace(b"\n", b"") + b"\n\x00\n\xc3\n")
        assert reply.count(b"\n") == 3
        with connect(port) as sock:  # leaves mid-line
            sock.sendall(b"12345")
        with connect(port) as sock:  # resets mid-line
            sock.sendall(b"6789")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert exchange(server.ports["reverse"], b"\x00a\xffb\n") == b"b\xffa\x00\n"
    assert exchange(server.ports["factor"], b"\x00\n42\n") == (
        b'error: not an integer: "\\x00"\n2 3 7\n')
    server.wait_for_stderr(r"(?s)(close .*){8}")
    stderr = server.stderr()
    assert "Traceback" not in stderr and "error:" not in stderr
    assert "unix:" not in stderr  # a peer that reset early is not a unix socket


def test_max_digits_option(serve: Serve) -> None:
    server = serve("factor", "--max-digits", "5")
    assert exchange(server.port, b"123456\n99999\n") == (
        b"error: too many digits (max 5)\n3 3 41 271\n")


# -- limits -----------------------------------------------------------------


def test_line_too_long_errors_then_closes_after_earlier_replies(serve: Serve) -> None:
    server = serve("reverse", "--max-line", "10")
    reply = exchange(server.port, b"ok\n0123456789\n" + b"x" * 11 + b"\nlost\n")
    assert reply == b"ko\n9876543210\nerror: line too long (max 10 bytes)\n"


def test_an_endless_line_is_cut_off_with_bounded_memory(serve: Serve) -> None:
    server = serve("reverse", "--max-line", "1000")
    with connect(server.port) as sock:
        sock.sendall(b"before\n")

        def flood() -> None:
            try:
                for _ in range(400):  # 25 MB without a single LF
                    sock.sendall(b"y" * 65536)
            except OSError:
                pass  # the server closed on us: expected

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        received = recv_until_closed(sock)
        sender.join(20)
    assert received == b"erofeb\nerror: line too long (max 1000 bytes)\n"
    assert exchange(server.port, b"still\n") == b"llits\n"


def test_max_connections_refuses_with_server_busy(serve: Serve) -> None:
    server = serve("reverse", "--max-connections", "1")
    with connect(server.port) as holder:
        holder.sendall(b"first\n")
        assert recv_lines(holder, 1) == [b"tsrif\n"]
        with connect(server.port) as refused:
            assert recv_until_closed(refused) == b"error: server busy\n"
    server.wait_for_stderr(r"close 127\.0\.0\.1")  # the holder is gone: room again
    assert exchange(server.port, b"next\n") == b"txen\n"
    server.wait_for_stderr(r"refused 127\.0\.0\.1:\d+ \(reverse\): server busy")


def test_idle_client_is_closed(serve: Serve) -> None:
    server = serve("reverse", "--idle-timeout", "1")
    with connect(server.port, timeout=15) as sock:
        sock.sendall(b"hi\n")
        assert recv_until_closed(sock) == b"ih\n"  # then silence: the server hangs up
    server.wait_for_stderr(r"close 127\.0\.0\.1:\d+ \(1 lines")


def test_time_limit_error_and_the_connection_continues(serve: Serve) -> None:
    server = serve("factor", "--time-limit", "1")
    with connect(server.port) as sock:
        sock.sendall(b"%d\n42\n" % long_semiprime())
        assert recv_lines(sock, 2) == [b"error: time limit exceeded (1 s)\n", b"2 3 7\n"]
        sock.sendall(b"%d\n" % semiprime(40))
        assert recv_lines(sock, 1) == [reply_for(semiprime(40))]


@pytest.mark.parametrize("leave", ["unread-replies", "abort"])
def test_long_factorization_is_cancelled_when_its_client_leaves(serve: Serve, leave: str) -> None:
    """A client that goes away (its kernel resets the connection) stops the work.

    A plain close with nothing unread is a half-close as far as TCP can tell
    (SPEC §3: the server then still answers, within --time-limit); a client that
    leaves with replies unread, or aborts, resets the connection.
    """
    server = serve("factor", "--time-limit", "300", "--factor-workers", "1")
    sock = connect(server.port)
    sock.sendall(b"42\n%d\n" % long_semiprime())
    worker = wait_working(lambda: factor_workers(server.pid))
    if leave == "abort":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # "2 3 7\n" is unread: the kernel answers with a reset
    assert wait_gone(worker), "the server kept factoring for a gone client"
    assert wait_asleep(lambda: factor_workers(server.pid)), "a worker is still computing"
    server.wait_for_stderr(r"close 127\.0\.0\.1:\d+ \(2 lines")
    # The pool replaced its worker: the next big number is served.
    assert exchange(server.port, b"%d\n" % semiprime(40)) == reply_for(semiprime(40))


# -- stopping -----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_and_exits_cleanly(serve: Serve, sig: int) -> None:
    server = serve("reverse", "factor", services=2)
    with connect(server.ports["reverse"]) as idle, connect(server.ports["factor"]) as busy:
        idle.sendall(b"abc\n")
        assert recv_lines(idle, 1) == [b"cba\n"]
        big = semiprime(48)  # a worker needs a moment for this one
        busy.sendall(b"42\n%d\n" % big)
        assert recv_lines(busy, 1) == [b"2 3 7\n"]  # so the big line was read too
        code = server.stop(sig)
        assert recv_until_closed(busy) == reply_for(big)  # finished before closing
        assert recv_until_closed(idle) == b""
    assert code == 0
    stderr = server.stderr()
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].split(" ", 2)[-1].startswith("stopped after")
    assert "2 connections" in stderr and "3 lines" in stderr


def test_port_in_use_is_one_clear_line_and_exit_1(serve: Serve) -> None:
    first = serve("reverse")
    result = run([*script("tcpkit"), "serve", "reverse", "--listen",
                  f"127.0.0.1:{first.port}"], timeout=30)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{first.port}: Address already in use"]
    assert result.stdout == b""
    assert exchange(first.port, b"still here\n") == b"ereh llits\n"


# Root without the capability to bind low ports (it keeps its files: running as
# nobody would also lose the packages installed under root's home).
UNPRIVILEGED = ["setpriv", "--bounding-set", "-net_bind_service",
                "--inh-caps", "-net_bind_service"] if os.geteuid() == 0 else []


@needs("setpriv")
def test_permission_denied_on_a_low_port_is_one_line_and_exit_1() -> None:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as setting:
        if int(setting.read()) <= 80:
            pytest.skip("this kernel lets anyone bind port 80")
    result = run([*UNPRIVILEGED, *script("tcpkit"), "serve", "reverse", "--listen", "127.0.0.1:80"],
                 timeout=30)
    assert result.returncode == 1, result
    assert result.stderr.decode().splitlines() == [
        "error: cannot listen on 127.0.0.1:80: Permission denied"]


@pytest.mark.parametrize("args", [
    ["nosuchservice"],
    ["reverse", "--listen", "localhost:nosuchport"],
    ["reverse", "--listen", "::1:80"],
    ["reverse", "--listen", "\u00b2"],
    ["reverse", "factor", "--listen", "0"],
    ["reverse", "--listen", "factor=0"],
    ["reverse", "--no-such-option"],
    ["reverse", "--max-line", "0"],
    ["reverse", "--time-limit", "soon"],
], ids=lambda args: " ".join(args))
def test_usage_errors_exit_2_with_one_error_line(args: list[str]) -> None:
    result = run([*script("tcpkit"), "serve", *args], timeout=30)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and stderr.splitlines()[-1] == errors[0], stderr
    assert errors[0].startswith("tcpkit")


def test_serve_help_documents_modes_and_workers() -> None:
    result = run([*script("tcpkit"), "serve", "--help"])
    assert result.returncode == 0
    text = result.stdout.decode()
    for word in (*MODES, "--workers", "N|auto", "--max-connections", "--idle-timeout",
                 "--max-line", "--drain-timeout"):
        assert word in text
    bad = run([*script("tcpkit"), "serve", "--mode", "bogus"])
    assert bad.returncode == 2
    assert run([*script("tcpkit"), "serve", "--workers", "0"]).returncode == 2
