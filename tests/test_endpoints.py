"""Endpoint strings of SPEC §2.1, parsed without touching the network."""

from __future__ import annotations

import socket

import pytest

from tcpkit.endpoints import (
    Endpoint,
    EndpointError,
    format_address,
    parse_endpoint,
    peer_text,
    resolve_port,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("7800", Endpoint(port=7800)),
    ("0", Endpoint(port=0)),
    (" 7801 ", Endpoint(port=7801)),
    (":7800", Endpoint(port=7800)),
    ("localhost:7800", Endpoint("localhost", 7800)),
    ("127.0.0.1:0", Endpoint("127.0.0.1", 0)),
    ("example.org:65535", Endpoint("example.org", 65535)),
    ("[::1]:7800", Endpoint("::1", 7800)),
    ("[::]:0", Endpoint("::", 0)),
    ("[fe80::1%lo]:80", Endpoint("fe80::1%lo", 80)),
    ("host:reverse", Endpoint("host", 7800)),
    ("host:factor", Endpoint("host", 7801)),
    ("[::1]:factor", Endpoint("::1", 7801)),
    ("unix:/tmp/tcpkit.sock", Endpoint(path="/tmp/tcpkit.sock")),
    ("unix:relative.sock", Endpoint(path="relative.sock")),
])
def test_every_endpoint_form(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


def test_system_service_names_come_from_etc_services() -> None:
    echo = socket.getservbyname("echo", "tcp")
    assert echo == 7
    assert parse_endpoint("host:echo") == Endpoint("host", 7)
    assert resolve_port("echo") == 7
    assert resolve_port("ssh") == 22


def test_registry_wins_over_the_system_database() -> None:
    assert resolve_port("reverse") == 7800
    assert resolve_port("factor") == 7801


def test_default_port_allows_a_bare_host() -> None:
    assert parse_endpoint("localhost", default_port=7800) == Endpoint("localhost", 7800)
    assert parse_endpoint("[::1]", default_port=7801) == Endpoint("::1", 7801)
    assert parse_endpoint("localhost:9", default_port=7800) == Endpoint("localhost", 9)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty endpoint"),
    ("   ", "empty endpoint"),
    ("unix:", "needs a path"),
    ("localhost", "needs a port"),
    ("[::1]", "needs a port"),
    ("[::1", "bad IPv6 endpoint"),
    ("[]:80", "bad IPv6 endpoint"),
    ("[::1]80", "bad IPv6 endpoint"),
    ("[::1]:", "bad IPv6 endpoint"),
    ("::1:80", "IPv6 addresses need brackets"),
    ("host:", "empty port"),
    ("host:65536", "port out of range"),
    ("99999", "port out of range"),
    ("host:nosuchservice", "unknown port or service name"),
    ("host:-1", "unknown port or service name"),
    ("host:0x50", "unknown port or service name"),
    ("\u00b2", "needs a port"),                                  # superscript two
    ("host:\u00b2", "unknown port or service name"),
    ("host:\uff17\uff18\uff10\uff10", "unknown port or service name"),  # fullwidth 7800
    ("[::1]:\u0667", "unknown port or service name"),            # Arabic-Indic 7
])
def test_bad_endpoints_say_why(text: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        parse_endpoint(text)


FORMS = "(accepted: PORT, HOST:PORT, [IPV6]:PORT, HOST:SERVICENAME or unix:/path)"


@pytest.mark.parametrize(("text", "problem"), [
    ("nonsense:port:x", "a host name has no ':' (only a bracketed IPv6 address does)"),
    ("-1", "a port is a whole number from 0 to 65535"),
    ("+7800", "a port is a whole number from 0 to 65535"),
    ("::1:80", "IPv6 addresses need brackets: [::1]:80"),
    ("fe80::1:80", "IPv6 addresses need brackets: [fe80::1]:80"),
    ("localhost", "needs a port (try localhost:PORT)"),
    ("[::1", "bad IPv6 endpoint, expected [ADDRESS]:PORT"),
])
def test_a_bad_endpoint_says_what_is_wrong_and_the_accepted_forms(text: str,
                                                                   problem: str) -> None:
    with pytest.raises(EndpointError) as caught:
        parse_endpoint(text)
    assert str(caught.value) == f"bad endpoint {text!r}: {problem} {FORMS}"


def test_endpoint_text_round_trips() -> None:
    for text in ("127.0.0.1:7800", "[::1]:7801", "unix:/tmp/x.sock", "example.org:1"):
        assert str(parse_endpoint(text)) == text
    assert format_address("::1", 5) == "[::1]:5"
    assert format_address("10.0.0.1", 5) == "10.0.0.1:5"


def test_peer_text_shows_ipv4_mapped_addresses_as_ipv4() -> None:
    assert peer_text(("::ffff:127.0.0.1", 4242, 0, 0)) == ("127.0.0.1", 4242)
    assert peer_text(("::1", 1, 0, 0)) == ("::1", 1)
    assert peer_text(("10.1.2.3", 80)) == ("10.1.2.3", 80)
    assert peer_text("") == ("unix", 0)
    assert peer_text(None) == ("unknown", 0)  # getpeername failed: reset already


def test_serve_without_services_plans_both_on_their_default_ports() -> None:
    from tcpkit.cli import plan_listeners

    assert plan_listeners([], []) == [("reverse", Endpoint(port=7800)),
                                      ("factor", Endpoint(port=7801))]
    # Naming one service's endpoint serves that service only: no other public port.
    assert plan_listeners([], ["factor=[::1]:0"]) == [("factor", Endpoint("::1", 0))]
    assert plan_listeners([], ["factor=:0", "reverse=:1", "factor=:2"]) == [
        ("factor", Endpoint(port=0)), ("factor", Endpoint(port=2)),
        ("reverse", Endpoint(port=1))]
    assert plan_listeners(["reverse", "factor"], ["factor=:0"]) == [
        ("reverse", Endpoint(port=7800)), ("factor", Endpoint(port=0))]
