"""Failover behind HAProxy: contrib/haproxy/haproxy.cfg under load, one instance killed.

tests/test_ops_haproxy.py shows the shipped configuration serves; this test kills
an instance while clients are busy and watches HAProxy's pool through its admin
socket (SPEC §9; docs/haproxy.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import hostile
from helpers.servers import Server, needs, script, start_server
from tcpkit.serving.run import MODES


@needs("haproxy")
@pytest.mark.parametrize("mode", [m for m in MODES if m != "iterative"])
def test_a_killed_backend_costs_only_its_inflight_requests(tmp_path: Path, mode: str) -> None:
    def instance(ports: dict[str, int]) -> Server:
        listen = [f"--listen={name}=127.0.0.1:{port}" for name, port in ports.items()]
        return start_server([*script("tcpkit"), "serve", "--mode", mode, *listen], services=2)

    outcome = hostile.behind_haproxy(instance, tmp_path, clients=4, seconds=3, mode=mode)
    print(outcome)
    details = outcome.details
    assert details["both_up_first"] and details["marked_down"] and details["marked_up_again"]
    assert details["ok"] > 100  # the load really ran
    # Each client has one request in flight at a time: at most that many fail,
    # and only while the dead backend was still in the pool.
    assert outcome.lost <= 4, details
    assert details["failed_outside_kill_window"] == 0, details
    assert details["sessions_to_restarted"] > 0, details  # put back in the pool
