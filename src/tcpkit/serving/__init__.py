"""The serving layer: it moves bytes between sockets and sans-IO connections.

The protocol itself (framing, the per-connection state machine, the services)
lives outside this package and never sees a socket.  What is here is laid out
by axis, a folder each, a file per job::

    run.py         the one entry point: open every listener first (a port in use
                   fails fast, before anything is served), then pick a mode
    config.py      Limits, Listener and the modes' names: what every mode reads
    listeners.py   opening a listening socket from an Endpoint
    reexec.py      SIGUSR2: a fresh program image on the same listening sockets

    modes/         how clients are served
      aio.py         async: one event loop (uvloop) for every client; the server
      aio_client.py  ...one client: bytes to its connection, flow control, lingering
      aio_sessions.py  ...its protocol class for session services' clients
      aio_refused.py ...a refused client, lingering until it has read its error line
      aio_proxied.py ...its accept loop for listeners behind --proxy-protocol
      loop.py        the event loop: uvloop where installed, its error handler
      accepting.py   the accept loop shared by the blocking modes
      accepting_headers.py  its PROXY headers on their way (the connections still sending one)
      driver.py      the blocking modes' per-connection driver (one poll loop)
      driver_sessions.py  ...its subclass for session services' clients
      driver_fastpath.py  ...its fast path: a settled plain client in blocking recv, no poll
      iterative.py   one client at a time (the article's first server)
      threaded.py    a thread per client
      forking.py     a child process per client (the article's server)
      inetd.py       one already connected socket (--inetd, Accept=yes)
      supervisor.py  any mode in N worker processes (--workers)
      pipes.py       the self-pipes the modes wake and report through

    offload/       where offloaded work (an Offload answer) runs
      executors.py   the one factory, for every mode: a local pool or a Dask cluster
      jobs.py        the job protocol: a job's outcome, its reply, its metrics
      pool.py        the local pool's scheduler (round robin, burst workers)
      worker.py      the local pool's hardened worker processes and their backstops
      bridge.py      any executor, used from the blocking modes' threads
      dask.py        the Dask executor (--executor dask://)

    guards/        who may be served, and how safely
      gate.py        who gets in, one rule for every mode, each service its own: access lists, busy,
                     descriptor budget, per-address limits, PROXY trust, refusals (in the
                     service's syntax), their counts and logs, lingering; sans-IO
      admission.py   per-address limits (xinetd's per_source and cps), sans-IO
      access.py      allow/deny lists by network (xinetd's only_from), sans-IO
      proxy.py       the PROXY protocol header (HAProxy v1/v2): the real client, sans-IO
      proxied.py     ...that header read off an accepted socket, with a deadline
      privileges.py  --user/--group: drop root once every socket is open
      pidfile.py     --pid-file: written after binding, a live one refused
      tls.py         certificates, handshakes, reload on SIGHUP
      activation.py  systemd socket activation and sd_notify
      fdlimit.py     the descriptor budget: refuse before descriptors run out

    observe/       what an operator sees
      events.py      the Observer interface every mode reports to
      stats.py       the counters of the summary line
      metrics.py     Prometheus metrics (an Observer)
      names.py       reverse DNS for the logs, off the event loop

Arrows point down this list and never up: a mode imports guards, offload and
observe; nothing below imports a mode; ``run.py`` alone knows every mode.
"""
