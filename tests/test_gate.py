"""Who gets in, without a network: the gate every serving mode asks, and the
per-address rules (xinetd's per_source and cps) it applies."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import pytest

from tcpkit import Service, Session, registry
from tcpkit.framers import Lines as LineFraming
from tcpkit.framers import Netstrings
from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.guards.admission import BUSY, Admission, Refusal, parse_rate
from tcpkit.serving.guards.gate import MAX_LINGERING, Gate
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.observe.stats import Stats


class Recorder(Observer):
    """Keeps the refusal events a gate reports."""

    def __init__(self) -> None:
        self.refused_lines: list[tuple[str, str, int, str]] = []
        self.limits: list[tuple[str, str]] = []

    def refused(self, service: str, host: str, port: int, reason: str) -> None:
        self.refused_lines.append((service, host, port, reason))

    def limit_refused(self, service: str, kind: str) -> None:
        self.limits.append((service, kind))


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def having(self, text: str) -> list[str]:
        return [message for message in self.messages if text in message]


@pytest.fixture
def logged() -> Iterator[Lines]:
    """The tcpkit logger's lines (whether or not logging was set up to propagate)."""
    logger = logging.getLogger("tcpkit")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def make_gate(**limits: Any) -> tuple[Gate, Recorder, Stats]:
    observer, stats = Recorder(), Stats()
    return Gate(Limits(**limits), observer, stats), observer, stats


def test_busy_at_the_connection_limit() -> None:
    gate, observer, stats = make_gate(max_connections=2)
    assert gate.admit("echo", "10.0.0.1", 1000, 0, 0.0) is None
    assert gate.admit("echo", "10.0.0.1", 1001, 1, 0.0) is None
    assert gate.admit("echo", "10.0.0.1", 1002, 2, 0.0) is BUSY
    gate.release("echo", "10.0.0.1")  # one has left
    assert gate.admit("echo", "10.0.0.2", 1003, 1, 0.0) is None
    assert (stats.busy, stats.limited) == (1, 0)
    assert observer.limits == [("echo", "busy")]
    assert observer.refused_lines == [("echo", "10.0.0.1", 1002, "server busy")]


def test_the_refusal_line() -> None:
    assert BUSY.line == b"error: server busy\n"
    assert Refusal("per_ip", "too many connections from ::1").line == (
        b"error: too many connections from ::1\n")


def test_one_refused_line_per_tick_then_how_many_more(logged: Lines) -> None:
    gate, observer, stats = make_gate(max_connections=1)
    assert gate.admit("echo", "h", 0, 0, 0.0) is None  # the one it has room for
    for port in range(5):
        assert gate.admit("echo", "h", port, 1, 0.0) is BUSY
    assert len(observer.refused_lines) == 1 and stats.busy == 5
    gate.tick(1)
    assert logged.having("refused 4 more connections in the last second")
    gate.tick(1)  # nothing refused since: nothing to sum up
    assert len(logged.having("more connections")) == 1
    gate.admit("echo", "h", 9, 1, 1.0)
    gate.tick(1)  # a single refusal is its own line, not "refused 0 more"
    assert len(observer.refused_lines) == 2 and len(logged.having("more connections")) == 1


def test_descriptor_budget_lowers_the_limit_and_logs_each_episode(logged: Lines) -> None:
    gate, observer, stats = make_gate(max_connections=10_000)
    gate.budget(limit=64, in_use=10)  # 64 - 10 in use - 16 kept free
    assert gate.max_open == 38 and gate.max_lingering == 8  # half the headroom
    assert logged.having("descriptor limit 64: room for 38 connections (--max-connections "
                         "10000)")
    for _ in range(2):  # two episodes, each logged when it begins and when it ends
        assert gate.admit("echo", "h", 1, 37, 0.0) is None
        gate.release("echo", "h")  # (the mode's count, open_now, is what is full)
        assert gate.admit("echo", "h", 2, 38, 0.0) is BUSY
        assert gate.admit("echo", "h", 3, 38, 0.0) is BUSY
        gate.tick(38)  # still full: the episode goes on
        assert gate.fd_limited
        gate.tick(37)
        assert not gate.fd_limited
    assert len(logged.having("refusing new connections: 38 open, near the descriptor limit "
                             "(64)")) == 2
    assert len(logged.having("accepting again: 37 open")) == 2
    assert stats.busy == 4 and len(observer.refused_lines) == 2  # one a tick


def test_a_budget_above_the_limit_changes_nothing(logged: Lines) -> None:
    gate, _, _ = make_gate(max_connections=5)
    gate.budget(limit=1 << 20, in_use=10)
    assert gate.max_open > 5 and gate.max_lingering == MAX_LINGERING
    assert [gate.admit("echo", "h", p, p, 0.0) for p in range(5)] == [None] * 5
    assert gate.admit("echo", "h", 6, 5, 0.0) is BUSY  # --max-connections, not descriptors
    assert not gate.fd_limited and not logged.having("descriptor limit")


def test_per_ip_and_rate_refusals_count_as_limited() -> None:
    gate, observer, stats = make_gate(max_per_ip=1)
    assert gate.admit("echo", "a", 1, 0, 0.0) is None
    refusal = gate.admit("echo", "a", 2, 1, 0.0)
    assert refusal is not None and refusal.kind == "per_ip"
    assert gate.admit("echo", "b", 3, 1, 0.0) is None  # another address
    assert gate.admit("echo", "unix", 0, 2, 0.0) is None  # unix clients have no address
    assert gate.admit("echo", "unix", 0, 3, 0.0) is None
    gate.release("echo", "a")
    assert gate.admit("echo", "a", 4, 3, 0.0) is None
    assert (stats.busy, stats.limited) == (0, 1)
    assert observer.limits == [("echo", "per_ip")]
    assert observer.refused_lines == [("echo", "a", 2, "too many connections from a")]

    gate, observer, stats = make_gate(rate_per_ip=2.0)
    assert [gate.admit("echo", "a", p, 0, 0.0) for p in range(2)] == [None, None]
    refusal = gate.admit("echo", "a", 3, 0, 0.1)
    assert refusal is not None and refusal.kind == "rate" and stats.limited == 1
    assert observer.limits == [("echo", "rate")]
    assert gate.admit("echo", "a", 4, 0, 0.6) is None  # a token is back


class RacyAdmission(Admission):
    """Per-address counts updated read, yield, write: without the gate's lock,
    two threads updating at once lose one of the updates."""

    def __init__(self) -> None:
        super().__init__(max_per_ip=1 << 30)
        self.open = 0

    def admit(self, host: str, now: float) -> Refusal | None:
        count = self.open
        time.sleep(0)  # let another thread run right here
        self.open = count + 1
        return None

    def release(self, host: str) -> None:
        count = self.open
        time.sleep(0)
        self.open = count - 1


def test_releases_from_threads_and_admits_are_serialized() -> None:
    """Thread mode releases from its client threads while the accept loop admits."""
    gate, _, _ = make_gate(max_per_ip=1)
    gate.rules_for("echo").admission = rules = RacyAdmission()
    per_thread, threads = 200, 4
    for port in range(per_thread * threads):
        gate.admit("echo", "a", port, 0, 0.0)

    def release_some() -> None:
        for _ in range(per_thread):
            gate.release("echo", "a")

    workers = [threading.Thread(target=release_some) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for port in range(per_thread):  # meanwhile the accept loop admits more
        gate.admit("echo", "b", port, 0, 0.0)
    for worker in workers:
        worker.join(30)
        assert not worker.is_alive()
    assert rules.open == per_thread  # every update counted


def make_two_service_gate(**limits: Any) -> tuple[Gate, Stats]:
    """A gate for reverse, with its own max-connections of 3, and factor, with the
    server's (``limits``)."""
    def listener(name: str, own: Limits | None) -> Listener:
        return Listener(registry.get(name), socket.socket(), limits=own)

    listeners = [listener("reverse", Limits(max_connections=3)), listener("factor", None)]
    try:
        stats = Stats()
        return Gate(Limits(**limits), Recorder(), stats, listeners), stats
    finally:
        for each in listeners:
            each.sock.close()


def test_max_connections_counts_each_service_on_its_own() -> None:
    gate, stats = make_two_service_gate(max_connections=1)
    assert gate.admit("factor", "h", 1, 0, 0.0) is None
    assert gate.admit("factor", "h", 2, 1, 0.0) is BUSY  # factor has the server's 1
    assert [gate.admit("reverse", "h", p, 1, 0.0) for p in range(3, 6)] == [None] * 3
    assert gate.admit("reverse", "h", 6, 4, 0.0) is BUSY  # reverse's own 3
    gate.release("factor", "h")  # a factor client leaves: factor has room, reverse not
    assert gate.admit("reverse", "h", 7, 3, 0.0) is BUSY
    assert gate.admit("factor", "h", 8, 3, 0.0) is None
    assert stats.busy == 3
    assert gate.open_by_service == {"factor": 1, "reverse": 3}


def make_guarded_gate(**limits: Any) -> Gate:
    """A gate for reverse, with its own access list, per-IP limit, quiet deny and
    PROXY senders, and factor, with the server's (``limits``)."""
    own = Limits(allow=(ip_network("127.0.0.2"),), max_per_ip=1, quiet_deny=True,
                 proxy_from=(ip_network("127.0.0.1"),))
    listeners = [Listener(registry.get("reverse"), socket.socket(), limits=own),
                 Listener(registry.get("factor"), socket.socket())]
    try:
        return Gate(Limits(**limits), Recorder(), Stats(), listeners)
    finally:
        for each in listeners:
            each.sock.close()


def test_access_lists_and_per_ip_limits_are_each_service_s_own() -> None:
    gate = make_guarded_gate(deny=(ip_network("10.0.0.0/8"),), max_per_ip=2)
    denied = gate.admit("reverse", "127.0.0.1", 1, 0, 0.0)  # not on reverse's allow list
    assert denied is not None and denied.kind == "denied" and denied.silent  # its quiet deny
    assert gate.admit("reverse", "10.0.0.1", 2, 0, 0.0) is not None  # ...not on it either
    assert gate.admit("factor", "127.0.0.1", 3, 0, 0.0) is None  # factor: the server's lists
    refused = gate.admit("factor", "10.0.0.1", 4, 1, 0.0)
    assert refused is not None and refused.kind == "denied" and not refused.silent
    # Per-IP counts are per service: 127.0.0.2 holds one reverse (its own limit of 1)...
    assert gate.admit("reverse", "127.0.0.2", 5, 1, 0.0) is None
    per_ip = gate.admit("reverse", "127.0.0.2", 6, 2, 0.0)
    assert per_ip is not None and per_ip.kind == "per_ip"
    # ...which does not count against factor's (the server's 2)
    assert [gate.admit("factor", "127.0.0.2", p, 2, 0.0) for p in (7, 8)] == [None, None]
    assert gate.admit("factor", "127.0.0.2", 9, 4, 0.0) is not None
    gate.release("reverse", "127.0.0.2")
    assert gate.admit("reverse", "127.0.0.2", 10, 3, 0.0) is None
    assert gate.open_by_service == {"reverse": 1, "factor": 3}


def test_proxy_senders_are_each_service_s_own() -> None:
    gate = make_guarded_gate()
    policy = gate.proxy_for("reverse")
    assert policy is not None and policy.untrusted("127.0.0.1") is None
    assert policy.untrusted("127.0.0.2") is not None
    assert gate.proxy_for("factor") is None  # factor's listeners read no header
    assert gate.proxy_for("echo") is None  # a service with no listener: the server's


def test_a_refusal_in_the_service_s_own_syntax() -> None:
    mail = Service("mail", 0, "", session=Greeter, framer=LineFraming(newline=b"\r\n"),
                   errors=lambda kind, message: f"421 {kind}: {message}".encode())
    netstring = Service("ns", 0, "", lambda line: line, framer=Netstrings())
    assert Gate.reply(mail, BUSY) == b"421 refused: server busy\r\n"
    assert Gate.reply(netstring, BUSY) == b"18:error: server busy,"  # its framing, our words
    assert Gate.reply(registry.get("reverse"), BUSY) == b"error: server busy\n"
    assert Gate.reply(mail, Refusal("denied", "access denied", silent=True)) == b""
    broken = Service("broken", 0, "", lambda line: line, errors=lambda kind, message: None)
    assert Gate.reply(broken, BUSY) == b"error: server busy\n"  # a broken hook: our own


class Greeter(Session):
    def received(self, message: bytes) -> str:
        return "250 ok"


def test_the_descriptor_budget_is_for_the_whole_process() -> None:
    gate, _ = make_two_service_gate(max_connections=100)
    gate.budget(limit=64, in_use=10)  # room for 38 connections, of all services
    assert gate.max_open == 38
    assert gate.admit("reverse", "h", 1, 0, 0.0) is None
    assert gate.admit("factor", "h", 2, 38, 0.0) is BUSY and gate.fd_limited
    assert gate.admit("factor", "h", 3, 37, 0.0) is None


def test_lingering_refused_sockets_are_capped() -> None:
    gate, _, _ = make_gate()
    gate.budget(limit=64, in_use=10)
    assert [gate.linger() for _ in range(9)] == [True] * 8 + [False]
    gate.unlinger()
    assert gate.linger() and not gate.linger()


# -- the per-address rules ----------------------------------------------------


def test_admission_rules() -> None:
    rules = Admission(max_per_ip=2, rate_per_ip=2.0)
    assert rules.admit("a", 0.0) is None and rules.admit("a", 0.0) is None
    refusal = rules.admit("a", 0.0)
    assert refusal is not None and refusal.kind == "per_ip"
    assert refusal.message == "too many connections from a"
    rules.release("a")
    refusal = rules.admit("a", 0.1)  # a slot is free, but the bucket (2/s) is empty
    assert refusal is not None and refusal.kind == "rate"
    assert rules.admit("a", 0.6) is None  # half a second later: one new token
    assert rules.admit("b", 0.6) is None  # another address has its own figures
    for host in ("a", "a", "b"):
        rules.release(host)
    rules.sweep(100.0)
    assert rules.tracked() == 0  # nothing open, buckets full: forgotten


@pytest.mark.parametrize("text, rate", [("5", 5.0), ("5/s", 5.0), ("120/m", 2.0),
                                        ("0.5/s", 0.5), ("30/min", 0.5)])
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "0/s", "5/h", "-1"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)
