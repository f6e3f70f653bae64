"""contrib/haproxy/haproxy-proxy-protocol.cfg run for real: what HAProxy's
send-proxy (v1) and send-proxy-v2 put on the wire is what our parser reads.

HAProxy runs the contrib file on loopback in front of a small backend that
reads each connection's header with :class:`PendingHeader` (the code the
serving modes use), then answers like tcpkit would.  A client connects from
127.0.0.2 (all of 127/8 is loopback), so the header must name 127.0.0.2 and
the client's own port, not HAProxy's address.
"""

from __future__ import annotations

import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.net import free_ports, recv_lines
from helpers.servers import needs
from tcpkit.serving.guards.proxied import PendingHeader
from tcpkit.serving.guards.proxy import LOCAL, PROXY, HeaderReader, ProxyHeader

CONFIG = Path(__file__).parent.parent / "contrib" / "haproxy" / "haproxy-proxy-protocol.cfg"


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
    text = CONFIG.read_text()
    text = text.replace("127.0.0.1:17800", f"127.0.0.1:{reverse.port}")
    text = text.replace("127.0.0.1:17801", f"127.0.0.1:{factor.port}")
    text = text.replace("bind :7800", f"bind 127.0.0.1:{front_reverse}")
    text = text.replace("bind :7801", f"bind 127.0.0.1:{front_factor}")
    text = text.replace("    log global\n", "").replace("inter 2s", "inter 200ms")
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert sum(line.count("127.0.0.1:") for line in settings) == 4  # every address replaced
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield reverse, factor, front_reverse, front_factor
    finally:
        proxy.terminate()
        output, _ = proxy.communicate(timeout=15)
        reverse.close()
        factor.close()
    assert not re.search(rb"\[ALERT\]", output), output.decode()


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
