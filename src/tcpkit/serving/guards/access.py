"""Access lists by network (xinetd's ``only_from``/``no_access``), sans-IO.

:class:`Networks` is a list of CIDR blocks (``10.0.0.0/8``, ``2001:db8::/32``,
a bare address for one host) that a client's address is matched against; the
access lists (``--allow``/``--deny``) and the trusted PROXY senders
(``--proxy-protocol``) are both one.  :class:`AccessList` is the rule: a
denied network always loses, and when any network is allowed, only those are.

Addresses arrive as the text the modes log (``peer_text``).  A dual-stack
``[::]`` socket sees an IPv4 client as ``::ffff:a.b.c.d``; it is matched as
the IPv4 address it is (and as the mapped IPv6 one), so ``--deny 10.0.0.0/8``
means the same on every listener.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED_MESSAGE = "access denied"  # what a refused client reads, after "error: "


def parse_network(text: str) -> IPNetwork:
    """A CIDR block or a single address; ValueError with a message for the user.

    Host bits set (``192.168.1.7/24``) are refused rather than silently widened:
    a typo in an access list should be seen, not obeyed.
    """
    cleaned = text.strip()
    try:
        return ipaddress.ip_network(cleaned)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            wide = ipaddress.ip_network(cleaned, strict=False)
            raise ValueError(f"{cleaned} has host bits set (did you mean {wide}?)") from None
        raise ValueError(f"not an address or CIDR block: {text!r}") from None


def client_address(host: str) -> IPAddress | None:
    """The address a peer's text names, or None (a unix socket peer has none)."""
    try:
        return ipaddress.ip_address(host.partition("%")[0])  # drop a %scope
    except ValueError:
        return None


class Networks:
    """CIDR blocks to match client addresses against, in the order given."""

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Networks:
        """From option values, each one block or several separated by commas."""
        return cls(parse_network(part) for text in texts
                   for part in text.split(",") if part.strip())

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ",".join(str(network) for network in self.networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        address = client_address(host)
        return address is not None and self.matches(address)

    def matches(self, address: IPAddress) -> bool:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(address in network or (mapped is not None and mapped in network)
                   for network in self.networks)


class AccessList:
    """Who may connect: not in ``deny``, and in ``allow`` when it names anyone.

    A peer without an IP address (a unix socket) is not subject to the lists:
    the socket file's permissions are its access control.
    """

    def __init__(self, allow: Networks | None = None, deny: Networks | None = None) -> None:
        self.allow = allow or Networks()
        self.deny = deny or Networks()

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> AccessList:
        return cls(Networks.parse(allow), Networks.parse(deny))

    @property
    def enabled(self) -> bool:
        return bool(self.allow) or bool(self.deny)

    def permits(self, host: str) -> bool:
        if not self.enabled:
            return True
        address = client_address(host)
        if address is None:
            return True
        if self.deny.matches(address):
            return False
        return not self.allow or self.allow.matches(address)
