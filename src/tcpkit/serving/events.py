"""What a server tells the world about its connections.

The serving modes report every listener, accept and close to an
:class:`Observer`.  The default one writes the access log lines of SPEC §2.1
(``accept HOST:PORT``, ``close HOST:PORT (N lines, T s)``); the article's
programs plug in one that prints their transcripts instead.  Observers must not
block: serving modes call them on the hot path.
"""

from __future__ import annotations

import logging

from tcpkit.endpoints import format_address

log = logging.getLogger("tcpkit")


class Observer:
    """Receives connection events; the default writes the access log."""

    def listening(self, service: str, address: str, mode: str) -> None:
        log.info("Listening on %s (%s, mode=%s)", address, service, mode)

    def accepted(self, service: str, host: str, port: int) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("accept %s (%s)", format_address(host, port), service)

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info("close %s (%d lines, %.3f s)", format_address(host, port), lines, seconds)

    def refused(self, service: str, host: str, port: int, reason: str) -> None:
        log.warning("refused %s (%s): %s", format_address(host, port), service, reason)
