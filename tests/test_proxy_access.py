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
from helpers.net import closed_unanswered, ipv6_loopback, recv_until_closed, talk
from helpers.proxy import proxy_v1, proxy_v2
from helpers.servers import Server, Servers, plugin_env, script, start_inetd, start_server
from helpers.tls import Certificates

MODES = [["--mode", "async"], ["--mode", "iterative"], ["--mode", "thread"],
         ["--mode", "fork"], ["--mode", "async", "--workers", "2"],
         ["--mode", "thread", "--workers", "2"]]
IDS = ["async", "iterative", "thread", "fork", "async-workers", "thread-workers"]
CONCURRENT = [["--mode", "async"], ["--mode", "thread"], ["--mode", "fork"]]


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


# -- each service its own guards (a [services.NAME] table each) -------------------

TWO_SERVICES = """\
deny = ["127.0.0.3"]

[services.reverse]
listen = "127.0.0.1:0"
allow = ["127.0.0.2"]
quiet-deny = true

[services.factor]
listen = "127.0.0.1:0"
"""


def serve_file(serve: Servers, tmp_path: Path, text: str, *args: str) -> Server:
    """``tcpkit serve --config FILE ARGS`` with ``text`` as the file, both services."""
    config = tmp_path / "tcpkit.toml"
    config.write_text(text)
    return serve("--config", str(config), *args, services=2, listen=False)


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_each_service_has_its_own_access_list(serve: Servers, tmp_path: Path,
                                              mode: list[str]) -> None:
    server = serve_file(serve, tmp_path, TWO_SERVICES, *mode)
    reverse, factor = server.ports["reverse"], server.ports["factor"]
    assert closed_unanswered(talk(reverse, b"hello\n", "127.0.0.1"))  # not allowed, quietly
    assert talk(reverse, b"hello\n", "127.0.0.2") == b"olleh\n"
    assert closed_unanswered(talk(reverse, b"hello\n", "127.0.0.3"))
    # factor has no lists of its own: the top level's deny, no allow list, no quiet deny
    assert talk(factor, b"12\n", "127.0.0.1") == b"2 2 3\n"
    assert talk(factor, b"12\n", "127.0.0.2") == b"2 2 3\n"
    assert talk(factor, b"12\n", "127.0.0.3") == b"error: access denied\n"
    wait_logged(server, "(reverse): access denied")  # the first refusal; a sum for the rest


def test_inetd_serves_with_its_service_s_own_access_list(tmp_path: Path) -> None:
    config = tmp_path / "tcpkit.toml"
    config.write_text('[services.reverse]\nallow = ["127.0.0.2"]\n[services.factor]\n')
    denied = b"error: access denied\n"
    for service, source, payload, reply in [("reverse", "127.0.0.1", b"hello\n", denied),
                                            ("reverse", "127.0.0.2", b"hello\n", b"olleh\n"),
                                            ("factor", "127.0.0.1", b"12\n", b"2 2 3\n")]:
        client, process = start_inetd(service, "--config", str(config), source=source)
        with client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            assert recv_until_closed(client) == reply, (service, source)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert (b"(reverse): access denied" in stderr) == (reply == denied), stderr


PER_IP = """\
max-per-ip = 1

[services.reverse]
listen = "127.0.0.1:0"
max-per-ip = 2

[services.factor]
listen = "127.0.0.1:0"
"""


@pytest.mark.parametrize("mode", CONCURRENT, ids=["async", "thread", "fork"])
def test_per_ip_limits_are_counted_per_service(serve: Servers, tmp_path: Path,
                                               mode: list[str]) -> None:
    """Two open reverse connections (reverse's own limit) do not count against
    factor's (the top level's 1), nor factor's against reverse's."""
    server = serve_file(serve, tmp_path, PER_IP, *mode)
    reverse, factor = server.ports["reverse"], server.ports["factor"]
    with contextlib.ExitStack() as held:
        for port, request, reply in [(reverse, b"one\n", b"eno\n"), (reverse, b"two\n", b"owt\n"),
                                     (factor, b"12\n", b"2 2 3\n")]:
            sock = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=20))
            sock.sendall(request)
            assert sock.recv(100) == reply  # admitted, and held open
        assert talk(reverse, b"three\n") == b"error: too many connections from 127.0.0.1\n"
        assert talk(factor, b"12\n") == b"error: too many connections from 127.0.0.1\n"
        assert talk(factor, b"12\n", "127.0.0.2") == b"2 2 3\n"  # another address


PROXIED_REVERSE = """\
[services.reverse]
listen = "127.0.0.1:0"
proxy-protocol = "127.0.0.1"

[services.factor]
listen = "127.0.0.1:0"
"""


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_only_a_proxied_service_reads_proxy_headers(serve: Servers, tmp_path: Path,
                                                    mode: list[str]) -> None:
    """reverse sits behind a proxy, factor is served plain, in one process."""
    server = serve_file(serve, tmp_path, PROXIED_REVERSE, *mode)
    reverse, factor = server.ports["reverse"], server.ports["factor"]
    header = proxy_v1(("203.0.113.7", 4242), ("127.0.0.1", reverse))
    assert talk(reverse, header + b"hello\n") == b"olleh\n"
    assert closed_unanswered(talk(reverse, b"hello\n"))  # no header from a trusted sender
    assert talk(factor, b"12\n") == b"2 2 3\n"  # factor reads none, trusts nobody to send one
    assert talk(factor, b"12\n", "127.0.0.2") == b"2 2 3\n"
    assert talk(factor, header + b"12\n").startswith(b"error: not an integer: \"PROXY TCP4")
    wait_logged(server, "close 203.0.113.7:4242 (1 lines")
