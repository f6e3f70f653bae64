"""The one base class of every exception tcpkit raises for a user to catch.

``except tcpkit.Error`` catches anything tcpkit itself reports: a connection
that cannot be made (:class:`~tcpkit.sockets.ConnectError`), a server that
closed early (:class:`~tcpkit.client.ConnectionClosed`), an ``error:`` reply
(:class:`~tcpkit.client.ServerError`), a bad endpoint, a port in use, unusable
TLS files, an unknown service...  Each of those still derives from what it
derived from before there was a common base (``OSError``, ``ValueError``,
``LookupError``...), so code that catches ``OSError`` around a connect keeps
working.  This module imports nothing, so every other module can use it.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every exception tcpkit raises for its users."""
