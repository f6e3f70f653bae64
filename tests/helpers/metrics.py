"""Reading a server's Prometheus endpoint: its port from the log, a scrape, one sample."""

from __future__ import annotations

import urllib.request

import pytest

from helpers.processes import wait_for
from helpers.servers import Server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(server: Server) -> int:
    return int(server.wait_for_stderr(r"Metrics at http://127\.0\.0\.1:(\d+)/metrics").group(1))


def scrape(port: int) -> Samples:
    """Every sample of /metrics by (name, labels)."""
    parser = pytest.importorskip("prometheus_client.parser")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_closed(server: Server, count: int) -> None:
    """Wait until the server has logged ``count`` close lines (metrics are final then)."""
    wait_for(lambda: server.stderr().count(" close ") >= count, 10, step=0.02)


def settled(port: int, labels: dict[str, str]) -> Samples:
    """A scrape once no connection is open (the gauge drops just after the close line)."""
    found: list[Samples] = []

    def none_open() -> bool:
        found[:] = [scrape(port)]
        return value(found[0], "tcpkit_connections_open", **labels) == 0

    assert wait_for(none_open, 10, step=0.05), "a connection stays open"
    return found[0]
