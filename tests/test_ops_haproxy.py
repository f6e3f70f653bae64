"""contrib/haproxy/haproxy.cfg, run for real on loopback: two tcpkit instances behind
HAProxy in TCP mode, health-checked with each protocol; one instance dies, clients
are still served."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from helpers.haproxy import localized, start_haproxy, stop_haproxy
from helpers.net import exchange, free_ports
from helpers.servers import needs


@needs("haproxy")
def test_haproxy_front_end(serve, tmp_path: Path) -> None:
    one, two = serve("reverse", "factor"), serve("reverse", "factor")
    front_reverse, front_factor = free_ports(2)
    ports = {17800: one.ports["reverse"], 17801: one.ports["factor"],
             17810: two.ports["reverse"], 17811: two.ports["factor"]}
    proxy = start_haproxy(localized("haproxy.cfg", ports, {7800: front_reverse,
                                                           7801: front_factor}), tmp_path)
    try:
        replies = [wait_exchange(front_reverse, b"line %d\n" % i) for i in range(6)]
        assert replies == [b"%d enil\n" % i for i in range(6)]
        assert wait_exchange(front_factor, b"1001\n") == b"7 11 13\n"
        for instance in (one, two):  # both instances served (checks and clients)
            instance.wait_for_stderr(r"close 127\.0\.0\.1:\d+ \(1 lines")
        # The health check speaks the protocol: each instance answered "health".
        two.stop(signal.SIGKILL)
        for i in range(6):  # refused by the dead one: redispatched to the live one
            assert exchange(front_reverse, b"after %d\n" % i) == b"%d retfa\n" % i
    finally:
        output = stop_haproxy(proxy)
    assert "[ALERT]" not in output, output


def wait_exchange(port: int, payload: bytes) -> bytes:
    deadline = time.monotonic() + 15
    while True:
        try:
            reply = exchange(port, payload)
            if reply:
                return reply
        except ConnectionRefusedError:
            pass
        assert time.monotonic() < deadline, "haproxy did not serve"
        time.sleep(0.05)
