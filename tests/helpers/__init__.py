"""Helpers shared by the tests (and bench/reliability.py, bench/soak.py); one place each.

- ``servers``: start ``tcpkit serve`` (or any server command) as a real process, wait
  until it listens, stop it by PID; ``Servers`` (the ``serve`` fixtures: any arguments,
  or ``in_mode`` one service in one mode, plug-ins through ``env``); ``start_on_port``
  for one told its port (a bench anchor); ``start_inetd`` on a real connection;
  ``run`` a command; ``needs`` a tool.
- ``net``: real loopback sockets: connect, exchange, read lines, abort (RST), free ports,
  the pair inetd would make, ``talk`` from a given source address; ``listening`` asks
  the kernel whether a port listens, without connecting; ``most_buffered``, what the
  kernel can hold between two peers.
- ``haproxy``: contrib/haproxy's files with the test's ports, HAProxy started and stopped.
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
