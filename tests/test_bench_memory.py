"""bench/run.py's memory figure for a process tree: Pss summed, shared pages once.

Needs no load generator: a real parent with 20 forked children, measured by
the bench's own functions."""

from __future__ import annotations

import subprocess
import sys

from helpers.bench import load_bench

FORKING_TREE = """
import os, sys
children = []
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        os.read(0, 1)  # until the test closes our stdin
        os._exit(0)
    children.append(pid)
print("ready", flush=True)
os.read(0, 1)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_memory_of_a_forked_tree_counts_shared_pages_once() -> None:
    """Pss summed over a parent and 20 idle children: about one parent, where the
    VmRSS sum counts the pages they share 21 times."""
    bench = load_bench()
    tree = subprocess.Popen([sys.executable, "-c", FORKING_TREE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert tree.stdout is not None and tree.stdout.readline() == b"ready\n"
        assert len(bench.descendants(tree.pid)) == 20
        summed, proportional = bench.tree_rss_kb(tree.pid), bench.tree_rss_kb(tree.pid, True)
        parent = bench.rss_kb([tree.pid])
        assert summed > 10 * parent, (summed, parent)
        assert proportional < 3 * parent, (proportional, parent)
    finally:
        assert tree.stdin is not None
        tree.stdin.close()
        tree.wait(10)
