"""Access lists (serving/guards/access.py), without a socket.

The servers' use of them (``--allow``/``--deny``, ``error: access denied``)
is tested end to end in test_ops_proxy.py.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpkit.serving.guards.access import AccessList, Networks, client_address, parse_network


@pytest.mark.parametrize(("text", "network"), [
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("192.0.2.7", "192.0.2.7/32"),
    (" 2001:db8::/32 ", "2001:db8::/32"),
    ("::1", "::1/128"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_parse_network(text: str, network: str) -> None:
    assert parse_network(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize(("text", "message"), [
    ("192.168.1.7/24", "has host bits set (did you mean 192.168.1.0/24?)"),
    ("10.0.0.0/33", "not an address or CIDR block: '10.0.0.0/33'"),
    ("localhost", "not an address or CIDR block"),
    ("", "not an address or CIDR block"),
    ("10.0.0.0/8/8", "not an address or CIDR block"),
])
def test_parse_network_refuses_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?)", r"\?\)")):
        parse_network(text)


def test_networks_from_repeated_and_comma_separated_options() -> None:
    networks = Networks.parse(["10.0.0.0/8,192.0.2.1", "2001:db8::/32"])
    assert str(networks) == "10.0.0.0/8,192.0.2.1/32,2001:db8::/32"
    assert "10.1.2.3" in networks and "192.0.2.1" in networks and "2001:db8::5" in networks
    assert "192.0.2.2" not in networks and "::1" not in networks
    assert not Networks.parse([]) and "10.1.2.3" not in Networks()


def test_deny_wins_over_allow() -> None:
    rules = AccessList.parse(allow=["10.0.0.0/8"], deny=["10.6.0.0/16"])
    assert rules.permits("10.1.2.3")
    assert not rules.permits("10.6.0.1")  # allowed by /8, denied by /16: denied
    assert not rules.permits("192.0.2.1")  # an allow list names everyone allowed


def test_deny_only_lets_everyone_else_in() -> None:
    rules = AccessList.parse(deny=["192.0.2.0/24", "2001:db8::/32"])
    assert rules.enabled
    assert not rules.permits("192.0.2.200") and not rules.permits("2001:db8::1")
    assert rules.permits("198.51.100.1") and rules.permits("::1")


def test_no_lists_permit_everyone() -> None:
    rules = AccessList()
    assert not rules.enabled and rules.permits("192.0.2.1") and rules.permits("::1")


def test_ipv4_clients_of_a_dual_stack_socket_match_ipv4_rules() -> None:
    rules = AccessList.parse(allow=["127.0.0.0/8"], deny=["127.0.0.9"])
    assert rules.permits("::ffff:127.0.0.1")
    assert not rules.permits("::ffff:127.0.0.9")
    assert not rules.permits("::ffff:192.0.2.1")
    # ...and a rule written in the mapped form still means what it says.
    mapped_rule = AccessList.parse(deny=["::ffff:0:0/96"])
    assert not mapped_rule.permits("::ffff:192.0.2.1") and mapped_rule.permits("::1")


def test_ipv6_with_a_scope_and_peers_without_an_address() -> None:
    rules = AccessList.parse(allow=["fe80::/10"])
    assert rules.permits("fe80::1%eth0")
    assert not rules.permits("2001:db8::1")
    # A unix socket's peer has no address: its file permissions are the access control.
    assert client_address("unix") is None and rules.permits("unix")


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 32))
def test_membership_is_the_prefix_of_the_bits(client: ipaddress.IPv4Address,
                                              base: ipaddress.IPv4Address, prefix: int) -> None:
    network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    mask = ((1 << prefix) - 1) << (32 - prefix)
    expected = int(client) & mask == int(network.network_address)
    rules = AccessList(deny=Networks([network]))
    assert rules.permits(str(client)) is not expected
    assert rules.permits(f"::ffff:{client}") is not expected  # mapped: the same answer
    assert (str(client) in Networks([network])) is expected
