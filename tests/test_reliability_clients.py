"""Hostile clients against every serving mode (SPEC §7), in short form for CI.

Each test starts a real ``tcpkit serve`` process on loopback, throws one kind of
hostile client at it (sizes scaled down from the issue's: ``python
bench/reliability.py`` runs the full ones) and checks that a well-behaved
client is still served, nothing it asked for is lost, and the server gives back
every file descriptor and child afterwards.
"""

from __future__ import annotations

import pytest

from helpers import hostile, hostile_proxy
from helpers.hostile import Snapshot, settle
from helpers.net import exchange
from helpers.numbers import long_semiprime
from helpers.proxy import proxy_v2
from helpers.servers import Server, script, start_server
from tcpkit.serving.run import MODES

CONCURRENT = [m for m in MODES if m != "iterative"]  # iterative serves one at a time
PACED = 0.02  # s between a good client's fresh connections: a few hundred TIME_WAITs, not 28,000


def start(serve: object, mode: str, *args: str) -> Server:
    server: Server = serve("reverse", "--mode", mode, *args)  # type: ignore[operator]
    assert hostile.served(server.port) == 1
    return server


def no_leaks(server: Server, baseline: Snapshot) -> None:
    after = settle(server.pid, baseline, timeout=30)  # generous: a loaded machine reaps late
    assert (after.fds, after.children) <= (baseline.fds, baseline.children), (baseline, after)
    assert server.process.poll() is None
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("mode", CONCURRENT)
def test_slowloris_slots_are_freed_and_others_served(serve: object, mode: str) -> None:
    server = start(serve, mode, "--idle-timeout", "2", "--max-connections", "400")
    baseline = Snapshot.of(server.pid)
    outcome = hostile.slowloris(server, clients=200, idle_timeout=2, mode=mode)
    print(outcome)
    details = outcome.details
    assert details["connected"] == 200
    assert outcome.lost == 0, details
    assert details["freed_silent"] == details["silent"], details
    assert details["freed_trickling"] == details["trickling"], details
    no_leaks(server, baseline)


@pytest.mark.parametrize("mode", CONCURRENT)
def test_never_reading_clients_keep_memory_bounded(serve: object, mode: str) -> None:
    server = start(serve, mode)
    baseline = Snapshot.of(server.pid)
    clients, megabytes = 10, 16
    outcome = hostile.never_reading(server, clients, megabytes, mode)
    growth_mb = outcome.details["growth_kb"] / 1024  # type: ignore[operator]
    print(outcome, f"memory growth {growth_mb:.1f} MB")
    # The clients stalled before sending everything: the server stopped reading.
    assert clients <= outcome.details["pushed_mb"] < clients * megabytes  # type: ignore[operator]
    # Without flow control the server would hold what it could not send: the
    # whole 160 MB.  With it, about one write buffer (256 KiB) and one read per
    # client -- plus, in fork mode, each client's process.
    per_client = 5 if mode == "fork" else 2
    assert growth_mb < per_client * clients + 16, outcome
    assert outcome.lost == 0, outcome
    no_leaks(server, baseline)


@pytest.mark.parametrize("mode", CONCURRENT)
def test_flood_beyond_max_connections_is_turned_away(serve: object, mode: str) -> None:
    """(Iterative mode serves one client at a time: the others wait in the backlog.)"""
    held = 20
    server = start(serve, mode, "--max-connections", str(held))
    baseline = Snapshot.of(server.pid)
    outcome = hostile.connection_flood(server, held=held, extra=30, mode=mode)
    print(outcome)
    assert outcome.details["held"] == held, outcome
    extras = outcome.details["extras"]
    assert isinstance(extras, dict)
    assert set(extras) <= {"busy", "refused", "reset"}, extras
    assert outcome.lost == 0
    no_leaks(server, baseline)
    assert "server busy" in server.stderr()


@pytest.mark.parametrize("mode", CONCURRENT)
def test_bad_proxy_headers_cost_no_good_request(serve: object, mode: str) -> None:
    """RELIABILITY.md's "bad PROXY headers" row, scaled down (iterative mode would
    wait out each stalled header in turn)."""
    server: Server = serve("reverse", "--mode", mode,  # type: ignore[operator]
                           "--proxy-protocol", "127.0.0.1")
    # Served once before the baseline, as start() does: libuv opens its EMFILE
    # reserve descriptor with the loop's first connection.
    assert exchange(server.port, proxy_v2(("203.0.113.50", 4000)) + b"ping\n") == b"gnip\n"
    baseline = Snapshot.of(server.pid)
    outcome = hostile_proxy.bad_proxy_headers(server, 200, mode, stalled_count=20,
                                              interval=PACED)
    print(outcome)
    assert set(outcome.details["flood"]) <= {"closed", "reset"}, outcome  # type: ignore[arg-type]
    assert outcome.details["good_answered"] > 0 and outcome.lost == 0, outcome  # type: ignore[operator]
    no_leaks(server, baseline)


@pytest.mark.parametrize("mode", CONCURRENT)
def test_a_denied_flood_costs_no_good_request(serve: object, mode: str) -> None:
    """RELIABILITY.md's "denied flood" row, scaled down."""
    server = start(serve, mode, "--deny", "127.0.0.2")
    baseline = Snapshot.of(server.pid)
    outcome = hostile_proxy.denied_flood(server, 200, mode, interval=PACED)
    print(outcome)
    assert outcome.details["flood"] == {"denied": 200}, outcome
    assert outcome.details["good_answered"] > 0 and outcome.lost == 0, outcome  # type: ignore[operator]
    no_leaks(server, baseline)


def fd_limited_server(mode: str, limit: int = 256) -> Server:
    command = [*script("tcpkit"), "serve", "reverse", "--mode", mode,
               "--listen", "127.0.0.1:0"]
    return start_server(["sh", "-c", f'ulimit -n {limit} && exec "$@"', "sh", *command])


@pytest.mark.parametrize("mode", CONCURRENT)
def test_flood_beyond_the_fd_limit_pauses_and_recovers(mode: str) -> None:
    server = fd_limited_server(mode)
    try:
        outcome = hostile.fd_exhaustion(server, clients=400, mode=mode)
        print(outcome)
        assert outcome.details["alive"] is True
        assert outcome.lost == 0, outcome
        assert "Traceback" not in server.stderr()
    finally:
        code = server.stop()
    assert code == 0, server.stderr()


@pytest.mark.parametrize("mode", ["async", "thread"])
def test_clients_past_the_descriptor_budget_are_refused_not_left_waiting(mode: str) -> None:
    """Where every client holds a descriptor in the server, those that would not
    fit get ``error: server busy`` at once (found at full size: 1,500 of 2,000
    thread-mode clients waited in the backlog with no answer)."""
    server = fd_limited_server(mode)
    try:
        # More than fit even in the first half (the half that waits for its
        # replies before any client leaves), so some must be refused.
        outcome = hostile.fd_exhaustion(server, clients=600, mode=mode)
        kinds = outcome.details["clients"]
        assert kinds.get("busy", 0) > 0, outcome
        assert kinds.get("hung", 0) == 0, outcome
        assert "room for" in server.stderr()  # the capacity is logged
    finally:
        assert server.stop() == 0, server.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_resets_and_half_closes_leak_nothing(serve: object, mode: str) -> None:
    server = start(serve, mode)
    baseline = Snapshot.of(server.pid)
    for outcome in (hostile.resets(server, 60, mode), hostile.half_close(server, 20, mode)):
        print(outcome)
        assert outcome.lost == 0, outcome
    no_leaks(server, baseline)


@pytest.mark.parametrize("mode", MODES)
def test_close_during_a_long_factorization_stops_its_work(serve: object, mode: str) -> None:
    server: Server = serve("factor", "--mode", mode, "--time-limit", "120",  # type: ignore[operator]
                           "--factor-workers", "1")
    # 2**64 + 1 is past the inline limit: this starts the worker pool.
    assert exchange(server.port, b"18446744073709551617\n") == b"274177 67280421310721\n"
    baseline = Snapshot.of(server.pid)
    outcome = hostile.abandoned_factorization(server, long_semiprime(), mode)
    print(outcome)
    assert outcome.details["started"], "the factorization never started"
    assert outcome.details["stopped"], f"the abandoned factorization kept running: {outcome}"
    assert outcome.lost == 0
    no_leaks(server, baseline)


# -- bad bytes ----------------------------------------------------------------------

REVERSE_CASES = [
    (b"a\x00b\n", b"b\x00a\n"),
    (b"\xff\xfeab\n", b"ba\xfe\xff\n"),  # invalid UTF-8 moves byte by byte
    (b"\xe2\x82\n", b"\x82\xe2\n"),  # a truncated sequence
    (b"\r\r\r\n", b"\r\r\r\n"),  # CR-only content, CRLF terminator
    (b"ab\rcd\n", b"dc\rba\n"),
    ("a\u0303b\n".encode(), "ba\u0303\n".encode()),
]

FACTOR_CASES = [
    (b"-0\n", b"error: 0 has no prime factorization\n"),
    (b"+\n", b'error: not an integer: "+"\n'),
    ("\uff14\uff12\n".encode(),  # fullwidth 42
     b'error: not an integer: "\\uff14\\uff12"\n'),
    (b"\x00\n", b'error: not an integer: "\\x00"\n'),
    (b"\xff\n", b'error: not an integer: "\\xff"\n'),  # as test_e2e_serve pins it
    (b" -42 \r\n", b"-1 2 3 7\r\n"),
    (b"\r\n", b'error: not an integer: ""\r\n'),
]


@pytest.mark.parametrize("mode", MODES)
def test_bad_bytes_each_get_their_reply_and_lose_nothing(serve: object, mode: str) -> None:
    reverse: Server = serve("reverse", "--mode", mode)  # type: ignore[operator]
    factor: Server = serve("factor", "--mode", mode)  # type: ignore[operator]
    sent = b"".join(request + b"ok\n" for request, _ in REVERSE_CASES)
    wanted = b"".join(reply + b"ko\n" for _, reply in REVERSE_CASES)
    assert exchange(reverse.port, sent) == wanted
    sent = b"".join(request + b"6\n" for request, _ in FACTOR_CASES)
    wanted = b"".join(reply + b"2 3\n" for _, reply in FACTOR_CASES)
    assert exchange(factor.port, sent) == wanted
    # 10^6 digits fit the default --max-line (1 MiB) but not --max-digits.
    assert exchange(factor.port, b"7" * 10**6 + b"\n15\n") == \
        b"error: too many digits (max 1000)\n3 5\n"
    # A million empty lines: a million empty replies.
    assert exchange(reverse.port, b"\n" * 10**6 + b"end\n") == b"\n" * 10**6 + b"dne\n"


@pytest.mark.parametrize("mode", MODES)
def test_ten_megabytes_without_newline_is_refused_then_closed(serve: object, mode: str) -> None:
    server: Server = serve("reverse", "--mode", mode)  # type: ignore[operator]
    reply = hostile.pipelined(server.port, [b"first", b"y" * (10 << 20), b"lost"])
    assert reply == b"tsrif\nerror: line too long (max 1048576 bytes)\n"
    assert hostile.served(server.port) == 1


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_requests_after_bad_ones_all_come_back(serve: object, mode: str) -> None:
    server: Server = serve("factor", "--mode", mode)  # type: ignore[operator]
    lines = [b"abc", b"12", b"\xff\xfe", b"-7", b"0", b"97"] * 500
    reply = hostile.pipelined(server.port, lines)
    assert reply.count(b"\n") == len(lines)
    assert reply.split(b"\n")[:6] == [
        b'error: not an integer: "abc"', b"2 2 3", b'error: not an integer: "\\xff\\xfe"',
        b"-1 7", b"error: 0 has no prime factorization", b"97"]

