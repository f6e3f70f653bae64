"""Access lists and PROXY headers, end to end in every serving mode (issue 11).

Real ``tcpkit serve`` processes on loopback; clients connect from different
127/8 source addresses (all loopback) and, for the PROXY protocol, send the
raw bytes HAProxy would (tests/helpers/proxy.py).  tests/test_proxy_haproxy.py
does the same through a real HAProxy.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

import pytest

from helpers import session_services
from helpers.metrics import metrics_port, scrape, value
from helpers.net import ipv6_loopback, recv_until_closed
from helpers.proxy import proxy_v1, proxy_v2
from helpers.servers import Server, Servers, plugin_env, script, start_server
from helpers.tls import Certificates

MODES = [["--mode", "async"], ["--mode", "iterative"], ["--mode", "thread"],
         ["--mode", "fork"], ["--mode", "async", "--workers", "2"],
         ["--mode", "thread", "--workers", "2"]]
IDS = ["async", "iterative", "thread", "fork", "async-workers", "thread-workers"]
CONCURRENT = [["--mode", "async"], ["--mode", "thread"], ["--mode", "fork"]]


def talk(port: int, payload: bytes, source: str = "127.0.0.1", host: str = "127.0.0.1",
         timeout: float = 20.0) -> bytes:
    """Send ``payload`` from ``source``, half-close, and read until the server closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((host, port))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_until_closed(sock)
        except TimeoutError:
            raise
        except OSError:  # reset, or not connected any more: closed without an answer
            return b"<reset>"


def closed_unanswered(reply: bytes) -> bool:
    return reply in (b"", b"<reset>")


def wait_logged(server: Server, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.stderr():
        assert time.monotonic() < deadline, f"not logged: {text!r}\n{server.stderr()}"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_access_lists_deny_wins_and_allow_names_everyone(serve: Servers,
                                                         mode: list[str]) -> None:
    server = serve("reverse", *mode, "--allow", "127.0.0.0/30", "--deny", "127.0.0.3")
    assert talk(server.port, b"hello\n", "127.0.0.1") == b"olleh\n"
    assert talk(server.port, b"hello\n", "127.0.0.2") == b"olleh\n"
    assert talk(server.port, b"hello\n", "127.0.0.3") == b"error: access denied\n"  # deny wins
    assert talk(server.port, b"hello\n", "127.0.0.5") == b"error: access denied\n"  # not allowed
    wait_logged(server, "access denied")
    assert "refused 127.0.0.3:" in server.stderr() or "refused 127.0.0.5:" in server.stderr()


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_quiet_deny_is_a_bare_close(serve: Servers, mode: list[str]) -> None:
    server = serve("reverse", *mode, "--deny", "127.0.0.4", "--quiet-deny")
    assert closed_unanswered(talk(server.port, b"hello\n", "127.0.0.4"))
    assert talk(server.port, b"hello\n", "127.0.0.1") == b"olleh\n"
    wait_logged(server, "access denied")  # silent to the client, not to the operator


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("mode", [["--mode", "async"], ["--mode", "thread"]],
                         ids=["async", "thread"])
def test_ipv4_clients_of_a_dual_stack_socket_match_ipv4_rules(serve: Servers,
                                                              mode: list[str]) -> None:
    server = serve("reverse", *mode, "--listen", "[::]:0", "--deny", "127.0.0.0/8")
    assert talk(server.port, b"hello\n", "127.0.0.1") == b"error: access denied\n"  # ::ffff:
    assert talk(server.port, b"hello\n", "::1", host="::1") == b"olleh\n"
    ipv6 = serve("reverse", *mode, "--listen", "[::]:0", "--deny", "::1")
    assert talk(ipv6.port, b"hello\n", "::1", host="::1") == b"error: access denied\n"
    assert talk(ipv6.port, b"hello\n", "127.0.0.1") == b"olleh\n"


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_proxy_headers_name_the_real_client(serve: Servers, mode: list[str]) -> None:
    server = serve("reverse", *mode, "--proxy-protocol", "127.0.0.1", "--deny", "198.51.100.0/24")
    port = server.port
    v1 = proxy_v1(("203.0.113.7", 4242), ("127.0.0.1", port))
    assert talk(port, v1 + b"hello\n") == b"olleh\n"
    assert talk(port, proxy_v2(("2001:db8::5", 4243)) + b"hello\n") == b"olleh\n"
    assert talk(port, proxy_v2(None) + b"local\n") == b"lacol\n"  # LOCAL: the socket's peer
    # The access list sees the real client, not the proxy (127.0.0.1, not denied).
    denied = proxy_v2(("198.51.100.9", 5000))
    assert talk(port, denied + b"hello\n") == b"error: access denied\n"
    wait_logged(server, "close 203.0.113.7:4242 (1 lines")
    wait_logged(server, "accept [2001:db8::5]:4243")
    wait_logged(server, "refused 198.51.100.9:5000 (reverse): access denied")


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_missing_malformed_and_untrusted_headers_are_closed(serve: Servers,
                                                            mode: list[str]) -> None:
    server = serve("reverse", *mode, "--proxy-protocol", "127.0.0.1,127.0.0.2")
    port = server.port
    assert closed_unanswered(talk(port, proxy_v1(("203.0.113.7", 1), ("127.0.0.1", 2)),
                                  source="127.0.0.9"))  # a sender not trusted
    wait_logged(server, "refused 127.0.0.9:")
    wait_logged(server, "not a trusted PROXY sender (127.0.0.1/32,127.0.0.2/32)")
    # Within the same second these are counted, and summed up on the next tick's line.
    assert closed_unanswered(talk(port, b"hello\n"))  # no header from a trusted sender
    assert closed_unanswered(talk(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\nhello\n"))
    good = proxy_v1(("203.0.113.8", 4000), ("127.0.0.1", port))
    assert talk(port, good + b"still served\n", "127.0.0.2") == b"devres llits\n"


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_a_slow_header_is_dropped_and_others_are_served_meanwhile(serve: Servers,
                                                                  mode: list[str]) -> None:
    server = serve("reverse", *mode, "--proxy-protocol", "127.0.0.1")
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as stalled:
        stalled.sendall(b"PROXY TCP4 ")  # and nothing more
        started = time.monotonic()
        # Even in iterative mode the header is read by the accept loop: others are served.
        good = proxy_v1(("203.0.113.9", 4001), ("127.0.0.1", port))
        assert talk(port, good + b"hello\n") == b"olleh\n"
        with contextlib.suppress(ConnectionResetError):
            assert stalled.recv(100) == b""
        waited = time.monotonic() - started
    assert 3.0 <= waited < 15.0, waited  # the header timeout (5 s), a tick's slack
    wait_logged(server, "no PROXY header within 5 s")


@pytest.mark.parametrize("mode", CONCURRENT, ids=["async", "thread", "fork"])
def test_per_ip_limits_count_the_real_client(serve: Servers, mode: list[str]) -> None:
    server = serve("reverse", *mode, "--proxy-protocol", "127.0.0.1", "--max-per-ip", "1")
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as held:
        held.sendall(proxy_v2(("203.0.113.10", 4100)) + b"one\n")
        assert held.recv(100) == b"eno\n"  # admitted, and held open
        second = proxy_v2(("203.0.113.10", 4101)) + b"two\n"
        assert talk(port, second) == b"error: too many connections from 203.0.113.10\n"
        other = proxy_v2(("203.0.113.11", 4102)) + b"three\n"
        assert talk(port, other) == b"eerht\n"  # same proxy, another client: served


@pytest.mark.parametrize("mode", [["--mode", "async"], ["--mode", "thread"]],
                         ids=["async", "thread"])
def test_the_header_comes_before_the_tls_handshake(serve: Servers, certs: Certificates,
                                                   mode: list[str]) -> None:
    server = serve("reverse", *mode, "--proxy-protocol", "127.0.0.1", *certs.args())
    context = ssl.create_default_context(cafile=certs.path("one-ca.pem"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
        raw.sendall(proxy_v1(("203.0.113.12", 4200), ("127.0.0.1", server.port)))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"secure\n")
            assert tls.recv(100) == b"eruces\n"
    wait_logged(server, "accept 203.0.113.12:4200")


@pytest.mark.parametrize("mode", [["--mode", "async"], ["--mode", "thread"]],
                         ids=["async", "thread"])
def test_metrics_count_refusals_by_reason(serve: Servers, mode: list[str]) -> None:
    server = serve("reverse", *mode, "--proxy-protocol", "127.0.0.1,127.0.0.2",
                   "--deny", "192.0.2.0/24", "--metrics", "127.0.0.1:0")
    metrics = metrics_port(server)
    port = server.port
    talk(port, b"no header\n")
    talk(port, proxy_v1(("192.0.2.1", 1), ("127.0.0.1", port)) + b"x\n")
    talk(port, b"hello\n", source="127.0.0.9")
    deadline = time.monotonic() + 15
    wanted = {"proxy_header": 1.0, "denied": 1.0, "proxy_untrusted": 1.0}
    while True:
        samples = scrape(metrics)
        seen = {reason: value(samples, "tcpkit_connections_refused_total", reason=reason,
                                service="reverse", mode=mode[1])
                for reason in wanted}
        if seen == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seen == wanted


@pytest.mark.parametrize("mode", ["async", "thread", "fork", "iterative"])
def test_a_session_sees_the_real_peer(tmp_path: Path, mode: str) -> None:
    env = plugin_env(tmp_path, Path(session_services.__file__), session_services.ENTRY_POINTS)
    server = start_server([*script("tcpkit"), "serve", "t-greeting", "--listen", "127.0.0.1:0",
                           "--mode", mode, "--proxy-protocol", "127.0.0.1"], env=env)
    try:
        reply = talk(server.port, proxy_v2(("203.0.113.13", 4300)))
        assert reply == b"hello 203.0.113.13\n"
    finally:
        server.stop()
