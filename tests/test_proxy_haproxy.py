"""contrib/haproxy/haproxy-proxy-protocol.cfg run for real: what HAProxy's
send-proxy (v1) and send-proxy-v2 put on the wire is what our parser reads.

HAProxy runs the contrib file on loopback in front of a small backend that
reads each connection's header with :class:`PendingHeader` (the code the
serving modes use), then answers like tcpkit would.  A client connects from
127.0.0.2 (all of 127/8 is loopback), so the header must name 127.0.0.2 and
the client's own port, not HAProxy's address.
"""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.haproxy import localized, start_haproxy, stop_haproxy
from helpers.metrics import scrape, value
from helpers.net import free_ports, recv_lines
from helpers.servers import Server, needs, script, start_server
from tcpkit.serving.guards.proxied import PendingHeader
from tcpkit.serving.guards.proxy import LOCAL, PROXY, HeaderReader, ProxyHeader

CONFIG = "haproxy-proxy-protocol.cfg"


class Backend:
    """A listener that records every PROXY header, then answers one line."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.headers: list[ProxyHeader] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.setblocking(False)
            pending = PendingHeader(conn, HeaderReader(), time.monotonic() + 10)
            try:
                header = None
                while header is None and not pending.expired(time.monotonic()):
                    select.select([conn], [], [], 1.0)
                    header = pending.read()
                if header is None:
                    raise TimeoutError("no header")
            except Exception as exc:  # recorded, and the test fails on it
                self.errors.append(repr(exc))
                return
            self.headers.append(header)
            conn.setblocking(True)
            conn.settimeout(10)
            try:
                line = recv_lines(conn, 1)[0]
                conn.sendall(self.answer(line.rstrip(b"\n")) + b"\n")
            except OSError:
                pass  # a health check may hang up early

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[Backend, Backend, int, int]]:
    reverse, factor = Backend(lambda line: line[::-1]), Backend(lambda line: b"2 3 7")
    front_reverse, front_factor = free_ports(2)
    config = localized(CONFIG, {17800: reverse.port, 17801: factor.port},
                       {7800: front_reverse, 7801: front_factor}, fast_checks=True)
    proxy = start_haproxy(config, tmp_path)
    try:
        yield reverse, factor, front_reverse, front_factor
    finally:
        output = stop_haproxy(proxy)
        reverse.close()
        factor.close()
    assert "[ALERT]" not in output, output


def from_client_address(port: int, payload: bytes, source: str = "127.0.0.2"
                        ) -> tuple[int, bytes]:
    """Send a line through HAProxy from ``source``; (our port, the reply)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10,
                                          source_address=(source, 0)) as sock:
                own_port = sock.getsockname()[1]
                sock.sendall(payload)
                return own_port, recv_lines(sock, 1)[0]
        except (ConnectionRefusedError, ConnectionResetError):
            assert time.monotonic() < deadline, "haproxy did not serve"
            time.sleep(0.05)


def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + 15
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@needs("haproxy")
def test_send_proxy_v2_and_v1_name_the_real_client(
        haproxy: tuple[Backend, Backend, int, int]) -> None:
    reverse, factor, front_reverse, front_factor = haproxy
    own_port, reply = from_client_address(front_reverse, b"client\n")
    assert reply == b"tneilc\n"
    served = [h for h in reverse.headers if h.command == PROXY]
    assert served and served[-1].version == 2
    assert served[-1].source == ("127.0.0.2", own_port)
    assert served[-1].destination == ("127.0.0.1", front_reverse)

    own_port, reply = from_client_address(front_factor, b"42\n", source="127.0.0.3")
    assert reply == b"2 3 7\n"
    served = [h for h in factor.headers if h.source == ("127.0.0.3", own_port)]
    assert served and served[-1].version == 1
    assert served[-1].destination == ("127.0.0.1", front_factor)

    # The health checks carry a header too: v2 LOCAL (HAProxy's own connection).
    wait_for(lambda: any(h.command == LOCAL and h.version == 2 for h in reverse.headers),
             "no v2 health check seen")
    wait_for(lambda: any(h.version == 1 and h.source is not None
                         and h.source[0] == "127.0.0.1" for h in factor.headers),
             "no v1 health check seen")
    assert reverse.errors == [] and factor.errors == []


@pytest.fixture
def haproxy_to_tcpkit(tmp_path: Path) -> Iterator[Callable[..., tuple[Server, int, int]]]:
    """The contrib file in front of a real ``tcpkit serve``: (server, front v2, front v1)."""
    started: list[tuple[Server, subprocess.Popen[bytes]]] = []

    def start(*args: str) -> tuple[Server, int, int]:
        back_reverse, back_factor, front_reverse, front_factor = free_ports(4)
        server = start_server([*script("tcpkit"), "serve", "--proxy-protocol", "127.0.0.1",
                               "--listen", f"reverse=127.0.0.1:{back_reverse}",
                               "--listen", f"factor=127.0.0.1:{back_factor}", *args],
                              services=2)
        config = localized(CONFIG, {17800: back_reverse, 17801: back_factor},
                           {7800: front_reverse, 7801: front_factor}, fast_checks=True)
        proxy = start_haproxy(config, tmp_path)
        started.append((server, proxy))
        return server, front_reverse, front_factor

    yield start
    for server, proxy in started:
        stop_haproxy(proxy)
        server.stop()


@needs("haproxy")
@pytest.mark.parametrize("mode", ["async", "thread", "fork", "iterative"])
def test_tcpkit_behind_haproxy_serves_the_real_client(
        haproxy_to_tcpkit: Callable[..., tuple[Server, int, int]], mode: str) -> None:
    server, front_v2, front_v1 = haproxy_to_tcpkit("--mode", mode, "--deny", "127.0.0.4")
    own_port, reply = from_client_address(front_v2, b"client\n")
    assert reply == b"tneilc\n"
    own_v1, reply = from_client_address(front_v1, b"42\n", source="127.0.0.3")
    assert reply == b"2 3 7\n"
    _, reply = from_client_address(front_v2, b"client\n", source="127.0.0.4")
    assert reply == b"error: access denied\n"  # the real client is denied, not HAProxy
    wait_for(lambda: f"close 127.0.0.2:{own_port} (1 lines" in server.stderr(),
             "the log does not name the real client (v2)")
    wait_for(lambda: f"accept 127.0.0.3:{own_v1} (factor)" in server.stderr(),
             "the log does not name the real client (v1)")
    wait_for(lambda: "refused 127.0.0.4:" in server.stderr(), "the denied client not logged")
    # HAProxy's health checks (v2 LOCAL, v1 from HAProxy) are served as HAProxy itself.
    wait_for(lambda: "accept 127.0.0.1:" in server.stderr(), "no health check served")
    assert "PROXY header" not in server.stderr()


@needs("haproxy")
@pytest.mark.parametrize("mode", ["async", "thread"])
def test_per_ip_limits_json_logs_and_metrics_behind_haproxy(
        haproxy_to_tcpkit: Callable[..., tuple[Server, int, int]], mode: str) -> None:
    server, front_v2, _ = haproxy_to_tcpkit("--mode", mode, "--max-per-ip", "1",
                                            "--log-format", "json", "--metrics", "127.0.0.1:0")
    metrics = int(re.search(r'Metrics at http://127\.0\.0\.1:(\d+)/metrics',
                            server.stderr()).group(1))  # type: ignore[union-attr]
    deadline = time.monotonic() + 15
    while True:  # HAProxy is up once it serves a first client
        try:
            with socket.create_connection(("127.0.0.1", front_v2), timeout=10,
                                          source_address=("127.0.0.2", 0)) as held:
                held.sendall(b"held\n")
                assert recv_lines(held, 1)[0] == b"dleh\n"
                # The same real client again: refused, though all come from HAProxy.
                _, reply = from_client_address(front_v2, b"two\n")
                assert reply == b"error: too many connections from 127.0.0.2\n"
                _, reply = from_client_address(front_v2, b"three\n", source="127.0.0.3")
                assert reply == b"eerht\n"
                break
        except (ConnectionRefusedError, ConnectionResetError, IndexError):
            assert time.monotonic() < deadline, "haproxy did not serve"
            time.sleep(0.05)
    # The replies came first; the log lines may still be on their way (stderr is read
    # by another thread): wait for them.
    server.wait_for_stderr(r'"event": ?"refused"[^\n]*"peer": ?"127\.0\.0\.2:', timeout=30)
    server.wait_for_stderr(r'"event": ?"accept"[^\n]*"peer": ?"127\.0\.0\.3:', timeout=30)
    records = [json.loads(line) for line in server.stderr().splitlines()
               if line.startswith("{")]
    assert any(r.get("event") == "refused" and r.get("peer", "").startswith("127.0.0.2:")
               for r in records)
    assert any(r.get("event") == "accept" and r.get("peer", "").startswith("127.0.0.3:")
               for r in records)
    samples = scrape(metrics)
    assert value(samples, "tcpkit_connections_refused_total", reason="per_ip",
                 service="reverse", mode=mode) == 1
