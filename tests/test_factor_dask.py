"""``--executor dask://``: a real distributed.LocalCluster (scheduler in this process,
a nanny and a worker as separate processes on loopback) behind a real tcpkit server."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest

from helpers.net import abort, connect, exchange, recv_lines
from helpers.numbers import HUGE, MID, reply_for
from helpers.processes import dask_children, wait_asleep, wait_working
from helpers.servers import Server

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A scheduler and one worker process (two task threads); yields dask://HOST:PORT."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=40) as local:
        yield "dask://" + local.scheduler_address.removeprefix("tcp://")


def test_pipelined_numbers_run_on_the_cluster_in_order(
        cluster: str, serve: Callable[..., Server]) -> None:
    server = serve("factor", "--executor", cluster)
    numbers = []
    for i in range(20):
        numbers += [MID[i % 4], 42 + i, 2**64 + i, 1]
    replies = exchange(server.port, b"".join(b"%d\n" % n for n in numbers), timeout=60)
    assert replies.split(b"\n")[:-1] == [reply_for(n)[:-1] for n in numbers]
    server.wait_for_stderr(r"offloading to the dask scheduler at tcp://127\.0\.0\.1:\d+")


def test_time_limit_on_the_cluster(cluster: str, serve: Callable[..., Server]) -> None:
    server = serve("factor", "--executor", cluster, "--time-limit", "1")
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"%d\n%d\n" % (HUGE, MID[0]))
        assert recv_lines(sock, 2) == [b"error: time limit exceeded (1 s)\n", reply_for(MID[0])]
    # The task killed its factoring child (a child of this test's cluster).
    assert wait_asleep(lambda: dask_children(os.getpid()), 10)


def test_disconnect_cancels_the_cluster_work(cluster: str, serve: Callable[..., Server]) -> None:
    server = serve("factor", "--executor", cluster)
    sock = connect(server.port)
    sock.sendall(b"%d\n" % HUGE)
    # The cluster's worker (a child of this process) runs the job in a child of its own.
    wait_working(lambda: dask_children(os.getpid()))
    abort(sock)
    assert wait_asleep(lambda: dask_children(os.getpid()), 10)
    # The worker is still there and takes new work.
    with connect(server.port, timeout=30) as again:
        again.sendall(b"%d\n" % MID[1])
        again.shutdown(socket.SHUT_WR)
        assert recv_lines(again, 1) == [reply_for(MID[1])]


def test_unreachable_scheduler_is_an_error_reply(serve: Callable[..., Server]) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve("factor", "--executor", f"dask://127.0.0.1:{port}")
    replies = exchange(server.port, b"42\n%d\n" % MID[0], timeout=60)
    assert replies == b"2 3 7\nerror: factor cluster unavailable\n"
