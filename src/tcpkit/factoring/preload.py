"""Imported by the worker pool's forkserver: start PARI once, before any fork.

Every worker forked from that server then has PARI ready (and its prime table
computed) instead of paying for it on its first request.
"""

from tcpkit.factoring.engine import preload

preload()
