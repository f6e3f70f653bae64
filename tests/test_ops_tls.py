"""TLS end to end: tcpkit's clients, the library and ``openssl s_client`` against a
real ``tcpkit serve --tls-cert/--tls-key``; handshake timeout; reload on SIGHUP."""

from __future__ import annotations

import select
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from helpers.numbers import BIG
from helpers.servers import needs, run, script, start_inetd
from tcpkit.client import AsyncReverseClient, FactorClient, ReverseClient
from tcpkit.sockets import ConnectError, INETSocket

trustme = pytest.importorskip("trustme")
def test_tcpkit_clients_over_tls(serve, certs) -> None:
    server = serve("reverse", "factor", *certs.args())
    ca = certs.path("one-ca.pem")
    done = run([*script("tcpkit"), "reverse", "--ca", ca, f"127.0.0.1:{server.ports['reverse']}"],
               stdin=b"hello\nworld\r\nlast")
    assert (done.returncode, done.stdout) == (0, b"olleh\ndlrow\r\ntsal\n"), done.stderr
    # Pipelined, with an offloaded number among inline ones: every reply, in order.
    done = run([*script("tcpkit"), "factor", "--ca", ca, "-s",
                f"localhost:{server.ports['factor']}", "42", BIG, "12"])
    assert (done.returncode, done.stdout) == (0, f"2 3 7\n{BIG}\n2 2 3\n".encode()), done.stderr
    many = b"".join(b"line %d\n" % i for i in range(20000))
    done = run([*script("tcpkit"), "reverse", "--ca", ca,
                f"127.0.0.1:{server.ports['reverse']}"], stdin=many)
    assert done.stdout == b"".join(line[::-1][1:] + b"\n" for line in many.splitlines(True))


def test_library_clients_over_tls(serve, certs) -> None:
    import asyncio

    server = serve("reverse", "factor", *certs.args())
    ca = certs.path("one-ca.pem")
    with ReverseClient(f"127.0.0.1:{server.ports['reverse']}", tls=True, ca=ca) as client:
        assert client.reverse("añb") == "bña"
    with FactorClient(f"127.0.0.1:{server.ports['factor']}", ca=ca) as client:
        assert client.factor(42) == [2, 3, 7]
    with INETSocket.connect("127.0.0.1", server.ports["reverse"], tls=True, ca=ca) as sock:
        sock.print("abc")
        assert sock.readline() == b"cba\n"

    async def talk() -> str:
        async with await AsyncReverseClient.connect(
                f"127.0.0.1:{server.ports['reverse']}", ca=ca) as client:
            return await client.reverse("xyz")

    assert asyncio.run(talk()) == "zyx"


def test_untrusted_certificate_is_one_clear_line(serve, certs) -> None:
    server = serve("reverse", *certs.args())
    done = run([*script("tcpkit"), "reverse", "--ca", certs.path("two-ca.pem"),
                f"127.0.0.1:{server.port}"], stdin=b"x\n")
    assert done.returncode == 1
    assert done.stderr.decode().startswith(f"error: cannot connect to 127.0.0.1:{server.port}: TLS")
    assert len(done.stderr.splitlines()) == 1
    done = run([*script("tcpkit"), "reverse", "--ca", certs.path("missing.pem"),
                f"127.0.0.1:{server.port}"], stdin=b"x\n")
    assert done.returncode == 2 and b"cannot use CA file" in done.stderr
    assert b"Traceback" not in done.stderr


@needs("openssl")
def test_openssl_s_client(serve, certs) -> None:
    server = serve("reverse", *certs.args())
    peer = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-quiet",
         "-CAfile", certs.path("one-ca.pem"), "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert peer.stdin is not None and peer.stdout is not None
        peer.stdin.write(b"Hello, TLS\n")
        peer.stdin.flush()
        ready, _, _ = select.select([peer.stdout], [], [], 20)
        assert ready, "no reply from the server"
        assert peer.stdout.readline() == b"SLT ,olleH\n"
    finally:
        peer.kill()
        peer.wait()


def test_silent_client_is_closed_after_the_handshake_timeout(serve, certs) -> None:
    server = serve("reverse", *certs.args(), "--tls-handshake-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as silent:
        assert silent.recv(100) == b""  # closed by the server (a timeout here fails)
    with ReverseClient(f"127.0.0.1:{server.port}", ca=certs.path("one-ca.pem")) as client:
        assert client.reverse("still serving") == "gnivres llits"


def test_sighup_reloads_the_certificate_and_keeps_connections(serve, certs) -> None:
    server = serve("reverse", *certs.args("one"))
    endpoint = f"127.0.0.1:{server.port}"
    with ReverseClient(endpoint, ca=certs.path("one-ca.pem")) as before:
        assert before.reverse("one") == "eno"
        certs.install("two")
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_stderr("TLS certificate reloaded")
        with ReverseClient(endpoint, ca=certs.path("two-ca.pem")) as after:
            assert after.reverse("two") == "owt"
        with pytest.raises(ConnectError, match="TLS"):
            ReverseClient(endpoint, ca=certs.path("one-ca.pem"))
        assert before.reverse("still open") == "nepo llits"  # the old connection lives on
    # A broken pair (cert two, key one) is refused; the server keeps certificate two.
    shutil.copy(certs.path("one-key.pem"), certs.where / "server-key.pem")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_stderr("TLS reload failed, keeping the old certificate: .*does not match")
    with ReverseClient(endpoint, ca=certs.path("two-ca.pem")) as after:
        assert after.reverse("ok") == "ko"
    assert server.stop() == 0


@pytest.mark.parametrize("problem, expected", [
    ("missing", "cannot read TLS certificate"),
    ("mismatch", "does not match certificate"),
    ("not-pem", "cannot load TLS certificate"),
    ("no-key", "--tls-cert and --tls-key must be given together"),
])
def test_bad_tls_files_are_one_line_and_exit_2(certs, problem, expected) -> None:
    cert, key = certs.path("one-cert.pem"), certs.path("one-key.pem")
    args = {"missing": ["--tls-cert", certs.path("nope.pem"), "--tls-key", key],
            "mismatch": ["--tls-cert", cert, "--tls-key", certs.path("two-key.pem")],
            "not-pem": ["--tls-cert", certs.path("one-ca.pem") + "x", "--tls-key", key],
            "no-key": ["--tls-cert", cert]}[problem]
    if problem == "not-pem":
        Path(args[1]).write_text("not a certificate\n")
    done = run([*script("tcpkit"), "serve", "reverse", "--listen", "127.0.0.1:0", *args])
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_sighup_without_tls_keeps_serving(serve) -> None:
    server = serve("reverse")  # systemctl reload must never stop a plain server
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_stderr("SIGHUP: nothing to reload")
    assert server.process.poll() is None
    with ReverseClient(f"127.0.0.1:{server.port}") as client:
        assert client.reverse("alive") == "evila"


def test_refusal_reaches_a_tls_client(serve, certs) -> None:
    server = serve("reverse", *certs.args(), "--max-per-ip", "1")
    ca = certs.path("one-ca.pem")
    with ReverseClient(f"127.0.0.1:{server.port}", ca=ca) as first:
        assert first.reverse("in") == "ni"
        done = run([*script("tcpkit"), "reverse", "--ca", ca, f"127.0.0.1:{server.port}"],
                   stdin=b"x\n")
        assert (done.returncode, done.stderr) == (1, b"error: too many connections from "
                                                     b"127.0.0.1\n")


def test_inetd_over_tls(certs) -> None:
    cert, key = certs.install("one")
    raw, process = start_inetd("reverse", "--tls-cert", cert, "--tls-key", key)
    from tcpkit.tlsclient import TLSChannel, client_context

    channel = TLSChannel(raw, client_context(certs.path("one-ca.pem")), "127.0.0.1", 20)
    with INETSocket(raw, tls=channel) as sock:
        channel.handshake()
        sock.print("secret", "inetd")
        assert [sock.readline(), sock.readline()] == [b"terces\n", b"dteni\n"]
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and b"(2 lines" in stderr
