"""``--executor dask://`` in every serving mode: a real distributed.LocalCluster (scheduler
in this process, a nanny and a worker as separate processes on loopback) behind a real
tcpkit server.

What proves the work ran on the cluster, not on the server: the scheduler's own
transition log shows the server's tasks (keys ``tcpkit-...``) finishing, and the
server never starts a local pool (no multiprocessing forkserver among its
descendants).  Processes are found by what they are — the Dask task's factoring
child by its command line, idle or not by asking the Dask worker — never by CPU use.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from helpers.net import abort, connect, exchange, recv_lines
from helpers.numbers import HUGE, MID, reply_for
from helpers.processes import alive, cmdline, dask_children, forkservers, wait_for
from helpers.servers import Server
from tcpkit.serving.run import MODES

distributed = pytest.importorskip("distributed")



@dataclass
class Cluster:
    url: str  # dask://HOST:PORT, for --executor
    client: Any  # a synchronous distributed.Client, to ask the scheduler and the worker

    def finished_keys(self) -> set[str]:
        """Keys of tcpkit's tasks the scheduler has seen finish (reach "memory")."""

        def finished(dask_scheduler: Any) -> list[str]:
            return [t.key for t in dask_scheduler.transition_log
                    if str(t.key).startswith("tcpkit-") and t.finish == "memory"]

        return set(self.client.run_on_scheduler(finished))

    def task_states(self) -> dict[str, str]:
        """The scheduler's tcpkit tasks now, and their states."""

        def states(dask_scheduler: Any) -> dict[str, str]:
            return {str(key): task.state for key, task in dask_scheduler.tasks.items()
                    if str(key).startswith("tcpkit-")}

        return dict(self.client.run_on_scheduler(states))

    def busy_children(self) -> set[int]:
        """Factoring children of the Dask worker that are running a task (not idle)."""

        def idle() -> list[int]:
            from tcpkit.serving.offload import dask

            with dask._children_lock:
                return [child.process.pid for children in dask._idle_children.values()
                        for child in children]

        idle_pids = {pid for pids in self.client.run(idle).values() for pid in pids}
        return set(dask_children(os.getpid())) - idle_pids


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A scheduler and one worker process (two task threads)."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=40) as local, \
            distributed.Client(local, set_as_default=False) as client:
        yield Cluster("dask://" + local.scheduler_address.removeprefix("tcp://"), client)


def serve_on(cluster: Cluster, serve: Callable[..., Server], mode: str, *args: str) -> Server:
    return serve("factor", "--mode", mode, "--executor", cluster.url, *args)


def no_local_pool(server: Server) -> bool:
    return forkservers(server.pid) == []


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_numbers_run_on_the_cluster_in_order(
        mode: str, cluster: Cluster, serve: Callable[..., Server]) -> None:
    server = serve_on(cluster, serve, mode)
    numbers = []
    for i in range(10):  # small (inline) and large (offloaded) interleaved
        numbers += [MID[i % 4], 42 + i, 2**64 + i, 1]
    before = cluster.finished_keys()
    replies = exchange(server.port, b"".join(b"%d\n" % n for n in numbers), timeout=60)
    assert replies.split(b"\n")[:-1] == [reply_for(n)[:-1] for n in numbers]
    # Each of the 20 offloaded numbers was a task the cluster finished...
    assert len(cluster.finished_keys() - before) == 20
    # ...and the server never started a worker of its own.
    assert no_local_pool(server)
    server.wait_for_stderr(r"offloading to the dask scheduler at tcp://127\.0\.0\.1:\d+")


def wait_for_busy_child(cluster: Cluster) -> set[int]:
    """The Dask worker's children running a task, once there is one."""
    busy: set[int] = set()

    def found() -> bool:
        busy.update(cluster.busy_children())
        return bool(busy)

    assert wait_for(found, 30), "the cluster did not start the task"
    return busy


@pytest.mark.parametrize("mode", MODES)
def test_time_limit_on_the_cluster(
        mode: str, cluster: Cluster, serve: Callable[..., Server]) -> None:
    server = serve_on(cluster, serve, mode, "--time-limit", "1")
    before = cluster.finished_keys()
    with connect(server.port, timeout=25) as sock:  # well inside the front end's own bound
        sock.sendall(b"%d\n" % HUGE)
        busy = wait_for_busy_child(cluster)
        # The child imported what the factor service declares, as local workers do.
        assert all("tcpkit.factoring.preload" in cmdline(pid) for pid in busy)
        sock.sendall(b"%d\n" % MID[0])
        assert recv_lines(sock, 2) == [b"error: time limit exceeded (1 s)\n", reply_for(MID[0])]
    # The task itself stopped the work: it killed its child and returned.
    assert not any(alive(pid) for pid in busy)
    assert len(cluster.finished_keys() - before) == 2
    assert no_local_pool(server)


@pytest.mark.parametrize("mode", MODES)
def test_disconnect_cancels_the_cluster_task(
        mode: str, cluster: Cluster, serve: Callable[..., Server]) -> None:
    server = serve_on(cluster, serve, mode)
    before = cluster.finished_keys()
    sock = connect(server.port)
    sock.sendall(b"%d\n" % HUGE)
    busy = wait_for_busy_child(cluster)
    [key] = [k for k, state in cluster.task_states().items() if state == "processing"]
    abort(sock)
    # The front end cancels the future (the scheduler forgets the task) and the
    # running task kills its child within its poll interval.
    assert wait_for(lambda: key not in cluster.task_states(), 15), "the task went on"
    assert wait_for(lambda: not any(alive(pid) for pid in busy), 15), "its child went on"
    assert key not in cluster.finished_keys() - before  # cancelled, never finished
    # The worker is still there and takes new work.
    with connect(server.port, timeout=30) as again:
        again.sendall(b"%d\n" % MID[1])
        again.shutdown(socket.SHUT_WR)
        assert recv_lines(again, 1) == [reply_for(MID[1])]
    assert no_local_pool(server)


@pytest.mark.parametrize("mode", ["async", "fork"])  # each try waits out the connect timeout
def test_unreachable_scheduler_is_an_error_reply(
        mode: str, serve: Callable[..., Server]) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve("factor", "--mode", mode, "--executor", f"dask://127.0.0.1:{port}")
    replies = exchange(server.port, b"42\n%d\n" % MID[0], timeout=60)
    assert replies == b"2 3 7\nerror: factor cluster unavailable\n"
    assert no_local_pool(server)
