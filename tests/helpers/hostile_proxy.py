"""Hostile clients for the PROXY protocol and the access lists (RELIABILITY.md rows).

Two floods, each while a well-behaved client keeps asking on fresh connections:
bad PROXY headers (missing, malformed, stalled) against ``--proxy-protocol
127.0.0.1``, and denied clients (from 127.0.0.2) against ``--deny 127.0.0.2``.
Each records what the flood's connections saw, what the good client got, and
the server's memory (RSS) before and after.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from helpers.hostile import QUIET, Outcome, Sampler, settle
from helpers.net import recv_until_closed
from helpers.processes import rss_kb
from helpers.proxy import proxy_v2
from helpers.servers import Server

BAD_HEADERS = [
    b"hello\n",  # no header at all
    b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",  # malformed v1
    proxy_v2(("203.0.113.1", 1))[:12] + b"\x21\x11\xff\xff",  # v2 claiming 65535 bytes
    b"PROXY " + b"x" * 200,  # a v1 line past its 107 bytes
]
STALLED = 100  # of the bad-header flood, these send half a header and wait for the timeout


def _one(port: int, payload: bytes, source: str = "127.0.0.1", timeout: float = 20.0) -> bytes:
    """Send ``payload`` from ``source``, half-close, read to the end; b"<reset>" if reset."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_until_closed(sock)
        except TimeoutError:
            return b"<timeout>"
        except OSError:
            return b"<reset>"


class GoodClient:
    """Asks and checks one request per fresh connection until stopped, ``interval``
    seconds apart (a short run paces it: each connection leaves a TIME_WAIT port)."""

    def __init__(self, port: int, header: Callable[[int], bytes], interval: float = 0.0) -> None:
        self.port, self.header, self.interval = port, header, interval
        self.asked = self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GoodClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while True:  # asks at least once, however short the flood
            self.asked += 1
            with contextlib.suppress(OSError):
                line = b"ping %d" % self.asked
                reply = _one(self.port, self.header(self.asked) + line + b"\n")
                self.answered += reply == line[::-1] + b"\n"
            if self._stop.wait(self.interval):
                return


def _kinds(replies: list[bytes]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for reply in replies:
        kind = {b"": "closed", b"<reset>": "reset", b"error: access denied\n": "denied"}.get(
            reply, f"other:{reply[:30]!r}")
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def bad_proxy_headers(server: Server, count: int, mode: str,
                      stalled_count: int = STALLED, interval: float = 0.0) -> Outcome:
    """``count`` connections with bad headers (``stalled_count`` held until the timeout)."""
    port = server.port
    settle(server.pid, QUIET, timeout=10)
    before = rss_kb(server.pid)
    good_header = proxy_v2(("203.0.113.50", 4000))
    stalled: list[socket.socket] = []
    with Sampler(server.pid) as sampler, GoodClient(port, lambda i: good_header, interval) as good:
        for _ in range(stalled_count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(b"PROXY TCP4 ")
            stalled.append(sock)
        replies = [_one(port, BAD_HEADERS[i % len(BAD_HEADERS)])
                   for i in range(count - stalled_count)]
        replies += [_read_end(sock) for sock in stalled]
    settle(server.pid, QUIET, timeout=10)
    after = rss_kb(server.pid)
    return Outcome("bad PROXY headers", mode, f"{count} connections ({stalled_count} stalled)",
                   "missing, malformed, oversized, stalled", lost=good.asked - good.answered,
                   peak_pss_kb=sampler.peak_pss_kb,
                   details={"flood": _kinds(replies), "good_asked": good.asked,
                            "good_answered": good.answered, "rss_before_kb": before,
                            "rss_after_kb": after})


def _read_end(sock: socket.socket) -> bytes:
    with sock:
        try:
            return recv_until_closed(sock)
        except TimeoutError:
            return b"<timeout>"
        except OSError:
            return b"<reset>"


def denied_flood(server: Server, count: int, mode: str, interval: float = 0.0) -> Outcome:
    """``count`` clients from a denied address (127.0.0.2), one after another."""
    port = server.port
    settle(server.pid, QUIET, timeout=10)
    before = rss_kb(server.pid)
    with Sampler(server.pid) as sampler, GoodClient(port, lambda i: b"", interval) as good:
        replies = [_one(port, b"let me in\n", source="127.0.0.2") for _ in range(count)]
    settle(server.pid, QUIET, timeout=10)
    after = rss_kb(server.pid)
    return Outcome("denied flood", mode, f"{count} clients from 127.0.0.2", "--deny 127.0.0.2",
                   lost=good.asked - good.answered, peak_pss_kb=sampler.peak_pss_kb,
                   details={"flood": _kinds(replies), "good_asked": good.asked,
                            "good_answered": good.answered, "rss_before_kb": before,
                            "rss_after_kb": after})
