"""The gate: who gets in, for every serving mode of one server process, sans-IO.

Each mode accepts sockets its own way (an event loop's ``connection_made``, a
blocking ``accept``), but whether a new client is served is one decision, so
it is made here once: refused while the client's service is full (its own
``max-connections``, a ``[services.NAME]`` table's, else ``--max-connections``:
counted per service, so one busy service cannot lock out another), or while
the process is out of room for one more descriptor (a process-wide budget: see
:mod:`tcpkit.serving.guards.fdlimit`), then by the per-address
rules: first the access lists (``--allow``/``--deny``, a
:class:`~tcpkit.serving.guards.access.AccessList`: a denied client is refused
even when there is room), then those of
:class:`~tcpkit.serving.guards.admission.Admission`.  Every one of those rules
is a service's own (:class:`ServiceRules`: its table's values, else the
server's), and so are the per-address counts: a client's open reverse
connections do not count against its factor ones.  The gate also
keeps what goes with the decision: the counters (``Stats.busy`` and
``Stats.limited``, the observer's ``limit_refused``), the logging — a flood of
refusals is one ``refused`` line, then one "refused N more" line a second, and
running short of descriptors is logged when it begins and when it ends — and
how many refused sockets may linger while their ``error:`` line is read.
What a refused client reads is decided here too (:meth:`Gate.reply`): an
``error:`` line — in the service's own syntax when it has one (``errors=``,
``framer=``: mail answers ``421 server busy``) — or nothing at all for
``--quiet-deny`` and for connections dropped before they were served (a PROXY
header missing, malformed, late, or from an untrusted sender: :meth:`Gate.drop`).

Behind ``--proxy-protocol`` the address the gate is given is the real
client's, read from the header (see :mod:`tcpkit.serving.guards.proxied`):
the modes admit a proxied connection only once its header is in, and read a
header only on the listeners of a service that trusts senders
(:meth:`Gate.proxy_for`): another service of the same process is served plain.

It owns no socket and no clock: the mode passes ``now`` and the number of
clients it is serving (for the descriptor budget), so the rules are tested
without a network.  The gate counts each service's open clients itself
(admitted, not yet released), so that every mode counts them the same way.
Admitting and refusing happen where the mode accepts (one thread);
:meth:`Gate.release` may come from any thread (thread mode releases from its
client threads), so the per-service and per-address figures it shares with
:meth:`Gate.admit` are behind a lock.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from tcpkit.service import Service
from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.guards import fdlimit
from tcpkit.serving.guards.access import DENIED_MESSAGE, AccessList, Networks
from tcpkit.serving.guards.admission import BUSY, Admission, Refusal
from tcpkit.serving.guards.proxied import ProxyPolicy, Refused
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.observe.stats import Stats

log = logging.getLogger("tcpkit")

# Seconds between the modes' housekeeping: idle sweeps, the gate's "refused N
# more" line (so it counts one second's refusals), expired lingering sockets.
# Coarse on purpose: one timer per server, not one per client.
TICK = 1.0
# Seconds a refused client's socket, and an async client closed after an error
# reply or a drain, stay half-closed while their extra input is read and
# dropped.  Closing with unread input makes the kernel send a reset, and the
# reset can destroy the ``error:`` line or the last replies before the client
# reads them; a client that reads and closes ends it at once.
LINGER = 2.0
# The blocking driver's linger after an error reply or a drain: shorter,
# because it holds the client's thread or process (in iterative mode the whole
# server) meanwhile, and a drain waits for it past --drain-timeout.
LINGER_BLOCKING = 1.0
# After an error reply, at most this many bytes are dropped before the close
# (a client that broke the protocol gets a grace, not a free sink).
LINGER_BYTES = 1 << 20
# Refused sockets lingering at once, at most: each holds a descriptor (and in
# the blocking modes a slot in the accept loop's poll), so a refusal storm must
# not use up what the budget keeps free.  Past it a refused socket is closed at
# once.  Also capped by half of fdlimit.headroom (see Gate.budget).
MAX_LINGERING = 1000
# Refusal kinds counted as Stats.denied: who the client is, not how busy we are.
DROPPED = frozenset({"denied", "proxy_untrusted", "proxy_header"})
# The host the modes give for a unix-socket client (tcpkit.endpoints.peer_text).
UNIX_PEER = "unix"
# The errors= kind a service's own syntax is asked for a refusal in (see Gate.reply).
REFUSED = "refused"


class ServiceRules:
    """One service's admission rules, from its limits, and its open clients.

    A service without a ``[services.NAME]`` table gets the server's values,
    but still rules (and counts) of its own.
    """

    def __init__(self, limits: Limits) -> None:
        self.max_connections = limits.max_connections
        self.open = 0  # admitted, not yet released (under the gate's lock)
        self.admission = Admission(limits.max_per_ip, limits.rate_per_ip)
        access = AccessList(Networks(limits.allow), Networks(limits.deny))
        # None when there are no lists, so admit() pays one comparison for them.
        self.access = access if access.enabled else None
        self.denied = Refusal("denied", DENIED_MESSAGE, silent=limits.quiet_deny)
        self.proxy = (ProxyPolicy(Networks(limits.proxy_from))
                      if limits.proxy_from is not None else None)
        # Whether clients are counted per address, decided once, not per
        # connection; a client from UNIX_PEER (a unix socket) has no address
        # and is never counted.
        self.per_address = self.admission.enabled


class Gate:
    """Admission, refusal and lingering for one server process; see the module docstring."""

    def __init__(self, limits: Limits, observer: Observer, stats: Stats,
                 listeners: Sequence[Listener] = ()) -> None:
        self.limits = limits
        self.observer = observer
        self.stats = stats
        # Each service's rules: its listener's own limits, else the server's;
        # a service with no listener here (inetd) gets the server's on first use.
        self.rules: dict[str, ServiceRules] = {}
        for listener in listeners:
            if listener.service.name not in self.rules:
                self.rules[listener.service.name] = ServiceRules(listener.limits or limits)
        self._admission_lock = threading.Lock()
        # Clients (of all services) and lingering refused sockets allowed at
        # once: budget() sets them from the descriptor limit.
        self.max_open = sys.maxsize
        self.max_lingering = MAX_LINGERING
        self.lingering = 0  # refused sockets lingering now
        self.nofile = 0  # the descriptor limit budget() saw (0: not budgeted)
        self.fd_limited = False  # in an episode of refusing for want of descriptors
        self._refused_this_tick = 0

    def rules_for(self, service: str) -> ServiceRules:
        """``service``'s rules (made from the server's limits if it has none yet)."""
        rules = self.rules.get(service)
        if rules is None:
            rules = self.rules[service] = ServiceRules(self.limits)
        return rules

    def proxy_for(self, service: str) -> ProxyPolicy | None:
        """Whom ``service``'s listeners take a PROXY header from (None: they read none)."""
        return self.rules_for(service).proxy

    @property
    def open_by_service(self) -> dict[str, int]:
        """Each service's open clients, as the gate counts them."""
        return {name: rules.open for name, rules in self.rules.items()}

    def budget(self, limit: int | None = None, in_use: int | None = None) -> None:
        """Refuse (``error: server busy``) before descriptors run out, not after.

        Called once serving starts, by the modes whose clients each hold a
        descriptor in this process.  ``limit`` and ``in_use`` default to this
        process's figures.  Running out makes ``accept`` fail: the async mode
        then loses its clients to resets (see fdlimit), the blocking modes
        pause while the backlog waits with no answer; a budget gives each of
        those clients a clear refusal instead.
        """
        limit = fdlimit.nofile() if limit is None else limit
        room = fdlimit.connection_budget(limit, in_use)
        self.nofile = limit
        self.max_open = room
        self.max_lingering = min(MAX_LINGERING, max(1, fdlimit.headroom(limit) // 2))
        wanted = max([self.limits.max_connections,
                      *(rules.max_connections for rules in self.rules.values())])
        if room < wanted:
            log.info("descriptor limit %d: room for %d connections (--max-connections %d)",
                     limit, room, wanted,
                     extra={"event": "capacity", "nofile": limit, "connections": room})

    def admit(self, service: str, host: str, port: int, open_now: int,
              now: float) -> Refusal | None:
        """None if a new client may be served; else why not (counted and logged).

        ``open_now`` is how many clients (of every service) the mode serves
        now, for the descriptor budget.  Every admitted client must be
        :meth:`release`-d when it closes.  Draining is no refusal: a client
        accepted in the moment before the listeners closed gets its request
        answered.
        """
        rules = self.rules.get(service) or self.rules_for(service)  # no call if it has rules
        if rules.access is not None and not rules.access.permits(host):
            refusal: Refusal | None = rules.denied
        elif open_now >= self.max_open:
            if not self.fd_limited:
                self.fd_limited = True
                log.warning("refusing new connections: %d open, near the descriptor limit "
                            "(%d)", open_now, self.nofile, extra={"event": "fd-limit"})
            refusal = BUSY
        else:
            # The seat is taken inline (no helper calls): this runs once per
            # connection, and conn C=10 is mostly per-connection cost.
            with self._admission_lock:
                if rules.open >= rules.max_connections:
                    refusal = BUSY
                elif rules.per_address and host != UNIX_PEER:
                    refusal = rules.admission.admit(host, now)
                else:
                    refusal = None
                if refusal is None:
                    rules.open += 1
        if refusal is not None:
            self.refuse(service, host, port, refusal)
        return refusal

    def release(self, service: str, host: str) -> None:
        """A client of ``service`` admitted from ``host`` has gone (from any thread)."""
        rules = self.rules[service]
        with self._admission_lock:
            rules.open -= 1
            if rules.per_address and host != UNIX_PEER:
                rules.admission.release(host)

    @staticmethod
    def reply(service: Service, refusal: Refusal) -> bytes:
        """What a client of ``service`` refused for ``refusal`` reads before the close:
        nothing if silent; else tcpkit's ``error:`` line, or, for a service with
        a syntax of its own (``errors=``, ``framer=``), its ``errors=`` reply of
        kind ``"refused"``, framed as its replies are."""
        if refusal.silent or not service.own_error_syntax:
            return refusal.line
        return service.error_reply(REFUSED, refusal.message)

    def refuse(self, service: str, host: str, port: int, refusal: Refusal = BUSY) -> None:
        """Count a refused client; log it if it is the first since the last tick.

        The modes call it themselves for a client they admitted but cannot
        serve after all (no thread or process could be started for it).
        """
        if refusal.kind == "busy":
            self.stats.busy += 1
        elif refusal.kind in DROPPED:
            self.stats.denied += 1
        else:
            self.stats.limited += 1
        self.observer.limit_refused(service, refusal.kind)
        if self._refused_this_tick == 0:
            self.observer.refused(service, host, port, refusal.message)
        self._refused_this_tick += 1

    def drop(self, service: str, host: str, port: int, refused: Refused) -> None:
        """Count and log a connection closed before it was served (its PROXY
        header was missing, bad or late, or its sender is not trusted)."""
        self.refuse(service, host, port, Refusal(refused.kind, refused.reason, silent=True))

    def linger(self) -> bool:
        """Whether one more refused socket may linger; if so it is counted
        until :meth:`unlinger`."""
        if self.lingering >= self.max_lingering:
            return False
        self.lingering += 1
        return True

    def unlinger(self) -> None:
        """A lingering refused socket has closed."""
        self.lingering -= 1

    def tick(self, open_now: int) -> None:
        """Once a TICK: sum up the refusals not logged, end a descriptor episode."""
        if self._refused_this_tick > 1:
            log.warning("refused %d more connections in the last second (server busy, "
                        "per-client limits, access lists or PROXY headers)",
                        self._refused_this_tick - 1)
        self._refused_this_tick = 0
        if self.fd_limited and open_now < self.max_open:
            self.fd_limited = False
            log.info("accepting again: %d open", open_now, extra={"event": "fd-limit-over"})
