"""Server settings shared by every serving mode (SPEC §2.1 defaults)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

# At run time, not only for the type checker: tcpkit.serve checks keyword
# arguments against these fields' annotations.
from tcpkit.serving.guards.access import IPNetwork
from tcpkit.session_connection import MAX_UNSENT

if TYPE_CHECKING:
    from tcpkit.service import Service
    from tcpkit.serving.guards.tls import ServerTLS

# Serving models (SPEC §2.1), each a module of tcpkit.serving; see run.py.
MODES = ("async", "thread", "fork", "iterative")


@dataclass(frozen=True)
class Limits:
    """What a server allows its clients; every mode obeys all of these."""

    max_connections: int = 10_000
    idle_timeout: float = 300.0
    max_line: int = 1 << 20
    drain_timeout: float = 10.0
    time_limit: float = 30.0
    pool_size: int | None = None  # worker processes for offloaded work; None = CPUs
    executor: str | None = None  # where offloaded work runs: None = local pool, dask://H:P
    # Flow control: stop reading a client whose unsent replies pass the high
    # mark, resume below the low mark (bytes in the transport's write buffer).
    write_high: int = 256 * 1024
    write_low: int = 64 * 1024
    # ...and one whose replies wait behind this many unfinished jobs.
    max_waiting: int = 1024
    # Per source address (xinetd's per_source and cps); None = no limit.
    max_per_ip: int | None = None
    rate_per_ip: float | None = None  # new connections per second
    # Access lists (deny wins; an allow list names everyone allowed) and the
    # trusted PROXY protocol senders (None: no PROXY header is read).
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    quiet_deny: bool = False  # close a denied client without "error: access denied"
    proxy_from: tuple[IPNetwork, ...] | None = None
    # Sessions: unsolicited output a connection may hold unsent before it is
    # dropped ("send buffer full"), and the hub behind self.hub (None: in-process).
    max_unsent: int = MAX_UNSENT
    pubsub: str | None = None


@dataclass(frozen=True)
class Listener:
    """A service bound to an already listening socket."""

    service: Service
    sock: socket.socket
    tls: ServerTLS | None = None  # serve over TLS with this certificate
    # This service's own limits (a [services.NAME] table); None: the server's.
    limits: Limits | None = None
