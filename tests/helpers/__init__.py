"""Helpers shared by the tests (and bench/reliability.py, bench/soak.py); one place each.

- ``servers``: start ``tcpkit serve`` (or any server command) as a real process, wait
  until it listens, stop it by PID; ``start_on_port`` for one told its port (a bench
  anchor); ``run`` a command; ``needs`` a tool.
- ``net``: real loopback sockets: connect, exchange, read lines, abort (RST), free ports;
  ``listening`` asks the kernel whether a port listens, without connecting.
- ``processes``: /proc: one stat parser, process states, trees and their memory, the
  factor workers found by what they are (children of the forkserver), waiting on them.
- ``numbers``: one semiprime maker and the factor tests' numbers, sized by job length.
- ``tls``: throw-away CAs and certificates (trustme).
- ``metrics``: scraping a server's Prometheus endpoint.
- ``hostile``: hostile clients and the reliability scenarios they make.
- ``redis``: a throw-away redis-server on loopback (the pub/sub tests).
- ``examples``: the packages of examples/, installed as plug-ins or imported in-process.
- ``proxy``: PROXY protocol headers as HAProxy sends them (v1 text, v2 binary).
"""
