"""Serving models: they move bytes between sockets and sans-IO connections.

``run.py`` is the one entry point the command line uses: it opens every
listening socket first (so a port in use fails fast, with one clear line,
before anything is served), then hands them to the chosen mode.  Each mode has
a module of its own: ``aio.py`` (async), ``threaded.py``, ``forking.py`` and
``iterative.py``; the last three share ``accepting.py`` (the accept loop,
limits, signals, drain) and ``blocking.py`` (the per-connection driver), and
run offloaded work through ``offload.py``.  ``workers.py`` runs any mode in N
processes under a supervisor.  ``listeners.py``, ``pool.py``, ``events.py``,
``stats.py``, ``pipes.py`` and ``config.py`` are shared by all of them.

What an operator adds is mode-independent too: ``tls.py`` (certificate and
reload), ``admission.py`` (per-client limits, sans-IO), ``metrics.py``
(Prometheus, an Observer), ``names.py`` (reverse DNS for the logs),
``activation.py`` (systemd sockets and sd_notify) and ``inetd.py``.
"""
