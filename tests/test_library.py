"""The library of SPEC §5: INETSocket, the clients, factorize, and tcpkit.testing."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from helpers.servers import needs_ipv6
from tcpkit import (
    AsyncFactorClient,
    AsyncLineClient,
    AsyncReverseClient,
    FactorClient,
    INETSocket,
    LineClient,
    RequestError,
    ReverseClient,
    ServerError,
    Service,
    factorize,
)
from tcpkit.client import ConnectionClosed
from tcpkit.endpoints import EndpointError
from tcpkit.services import factor, reverse
from tcpkit.serving.config import Limits
from tcpkit.sockets import ConnectError
from tcpkit.testing import RunningServer, running


@pytest.fixture(scope="module")
def reverse_server() -> Iterator[RunningServer]:
    with running(reverse.SERVICE) as server:
        yield server


@pytest.fixture(scope="module")
def factor_server() -> Iterator[RunningServer]:
    with running(factor.SERVICE) as server:
        yield server


# -- INETSocket ------------------------------------------------------------------------


def test_connect_from_an_endpoint_and_read_lines(reverse_server: RunningServer) -> None:
    with INETSocket.connect(reverse_server.endpoint, timeout=10) as sock:
        assert sock.peerhost == "127.0.0.1" and sock.peerport == reverse_server.port
        assert sock.peeraddr == socket.inet_aton("127.0.0.1")
        assert sock.sockhost == "127.0.0.1"
        sock.print("hello", b"world")
        assert sock.readline() == b"olleh\n"
        sock.write("a\r\nlast")
        sock.shutdown_write()
        assert list(sock) == [b"dlrow\n", b"a\r\n", b"tsal\n"]
        assert sock.readline() == b""


def test_connect_with_host_and_port_and_perl_names(reverse_server: RunningServer) -> None:
    with INETSocket.connect("127.0.0.1", reverse_server.port) as sock:
        sock.print("two")
        assert sock.readline() == b"owt\n"
    with INETSocket.new(PeerAddr="127.0.0.1", PeerPort=reverse_server.port,
                        Timeout=10) as sock:
        sock.print("perl")
        assert sock.readline() == b"lrep\n"
    with INETSocket.new(PeerAddr=reverse_server.endpoint) as sock:
        sock.print("addr:port")
        assert sock.readline() == b"trop:rdda\n"


def test_connect_failures_are_connect_errors() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}: "
                                               "Connection refused"):
            INETSocket.connect(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConnectError, match=r"cannot connect to no-such-host\.invalid:7800: "):
        INETSocket.connect("no-such-host.invalid", 7800, timeout=5)


def accept_one(server: INETSocket, handle: Callable[[INETSocket], None]) -> threading.Thread:
    def serve() -> None:
        with server.accept() as client:
            handle(client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("make", [
    lambda: INETSocket.listen_on("127.0.0.1:0"),
    lambda: INETSocket.listen_on(0),
    lambda: INETSocket.new(LocalAddr="127.0.0.1", LocalPort=0, Listen=5),
], ids=["listen_on-endpoint", "listen_on-port", "new-Listen"])
def test_listen_accept_and_peer_addresses(make: Callable[[], INETSocket]) -> None:
    seen: dict[str, object] = {}

    def handle(client: INETSocket) -> None:
        seen.update(host=client.peerhost, port=client.peerport, addr=client.peeraddr,
                    kind=type(client))
        for line in client:
            client.write(line.upper())

    with make() as server:
        thread = accept_one(server, handle)
        with INETSocket.connect("127.0.0.1", server.sockport, timeout=10) as sock:
            sock.print("shout", "it")
            sock.shutdown_write()
            assert list(sock) == [b"SHOUT\n", b"IT\n"]
            assert seen == {"host": "127.0.0.1", "port": sock.sockport,
                            "addr": socket.inet_aton("127.0.0.1"), "kind": INETSocket}
        thread.join(10)


@needs_ipv6
def test_ipv6_peer() -> None:
    with INETSocket.listen_on("[::1]:0") as server:
        thread = accept_one(server, lambda client: client.print(client.peerhost))
        with INETSocket.connect(f"[::1]:{server.sockport}", timeout=10) as sock:
            assert sock.readline() == b"::1\n"
            assert sock.peeraddr == socket.inet_pton(socket.AF_INET6, "::1")
        thread.join(10)


def test_the_individual_calls() -> None:
    server = INETSocket.socket(socket.AF_INET)
    server.bind("127.0.0.1", 0)
    server.listen(5)
    with server:
        thread = accept_one(server, lambda client: client.print(client.readline()[-2::-1]))
        client = INETSocket.socket(socket.AF_INET)
        client.connect_to("127.0.0.1", server.sockport, timeout=10)
        with client:
            client.print("abc")
            assert client.readline() == b"cba\n"
        thread.join(10)


# -- clients ---------------------------------------------------------------------------


def test_factor_client(factor_server: RunningServer) -> None:
    with FactorClient(factor_server.endpoint) as client:
        assert client.factor(42) == [2, 3, 7]
        assert client.factor(-12) == [-1, 2, 2, 3]
        assert client.factor(1) == []
        big = (2**61 - 1) * (2**31 - 1)  # above 2**64: a worker process factors it
        assert client.factor(big) == [2**31 - 1, 2**61 - 1]
        with pytest.raises(ServerError, match=r"^0 has no prime factorization$"):
            client.factor(0)
        assert client.factor(1001) == [7, 11, 13]  # still connected after the error


def test_factor_many(factor_server: RunningServer) -> None:
    numbers = [42, 0, 97, *range(10**6, 10**6 + 2000)]
    with FactorClient(factor_server.endpoint) as client:
        results = list(client.factor_many(numbers))
    assert [n for n, _ in results] == numbers
    assert isinstance(results[1][1], ServerError)
    for n, factors in results[:1] + results[2:]:
        assert factors == factorize(n)


def test_reverse_client(reverse_server: RunningServer) -> None:
    with ReverseClient(reverse_server.endpoint) as client:
        assert client.reverse("hello") == "olleh"
        assert client.reverse("an\u0303b") == "bn\u0303a"
        assert client.reverse("") == ""
        assert client.reverse("a\udcffb") == "b\udcffa"  # an invalid byte, surrogate-escaped
        with pytest.raises(ValueError, match="line feed"):
            client.reverse("two\nlines")  # would be two requests: every reply off by one
        assert client.reverse("in step") == "pets ni"


def test_async_clients(reverse_server: RunningServer, factor_server: RunningServer) -> None:
    async def main() -> tuple[list[int], list[list[int]], str]:
        async with await AsyncFactorClient.connect(factor_server.endpoint) as client:
            first = await client.factor(42)
            many = await asyncio.gather(*(client.factor(n) for n in (12, 13, 14)))
            with pytest.raises(ServerError):
                await client.factor(0)
            with pytest.raises(ValueError, match="line feed"):
                await client.request(b"6\n7")
            assert await client.factor(6) == [2, 3]
        async with await AsyncReverseClient.connect(reverse_server.endpoint) as rev:
            text = await rev.reverse("async")
        return first, list(many), text

    assert asyncio.run(main()) == ([2, 3, 7], [[2, 2, 3], [13], [2, 7]], "cnysa")


def test_async_clients_with_async_with(reverse_server: RunningServer,
                                       factor_server: RunningServer) -> None:
    async def main() -> tuple[list[int], str]:
        async with AsyncFactorClient(factor_server.endpoint) as client:
            factors = await client.factor(42)
        async with AsyncReverseClient(reverse_server.endpoint, timeout=10) as rev:
            text = await rev.reverse("with")
        return factors, text

    assert asyncio.run(main()) == ([2, 3, 7], "htiw")


def hold_replies(count: int, replies: Callable[[list[bytes]], list[bytes]],
                 ) -> tuple[INETSocket, threading.Thread]:
    """A peer that answers only once ``count`` request lines have all arrived:
    a client that waits for each reply before sending the next never gets one."""
    server = INETSocket.listen_on("127.0.0.1:0")

    def handle(client: INETSocket) -> None:
        lines = [client.readline() for _ in range(count)]
        client.write(b"".join(reply + b"\n" for reply in replies(lines)))
        client.readline()  # until the client closes or half-closes

    return server, accept_one(server, handle)


def test_line_client_request_and_pipeline(reverse_server: RunningServer) -> None:
    with LineClient(reverse_server.endpoint, timeout=10) as client:
        assert client.request(b"abc") == b"cba"
        assert list(client.pipeline([b"one", b"two", b""])) == [b"eno", b"owt", b""]
    with pytest.raises(EndpointError, match="needs a port"):
        LineClient("localhost")  # a generic client has no default port


def test_line_client_pipeline_sends_without_waiting() -> None:
    server, thread = hold_replies(3, lambda lines: [line.strip().upper() for line in lines])
    with server, LineClient(f"127.0.0.1:{server.sockport}", timeout=10) as client:
        assert list(client.pipeline([b"a", b"b", b"c"])) == [b"A", b"B", b"C"]
    thread.join(10)


def test_async_line_client_pipelines_overlapping_requests() -> None:
    server, thread = hold_replies(3, lambda lines: [line.strip().upper() for line in lines])

    async def main() -> list[bytes]:
        async with AsyncLineClient(f"127.0.0.1:{server.sockport}", timeout=10) as client:
            return list(await asyncio.gather(*(client.request(x) for x in (b"a", b"b", b"c"))))

    with server:
        assert asyncio.run(main()) == [b"A", b"B", b"C"]
    thread.join(10)


def test_async_request_that_timed_out_keeps_its_place() -> None:
    """The late reply to a timed-out request is dropped, not given to the next one."""
    server, thread = hold_replies(2, lambda lines: [b"first reply", b"second reply"])

    async def main() -> bytes:
        async with AsyncLineClient(f"127.0.0.1:{server.sockport}", timeout=0.5) as client:
            with pytest.raises(TimeoutError):
                await client.request(b"first")  # the peer answers only after "second"
            client.timeout = 10
            return await client.request(b"second")

    with server:
        assert asyncio.run(main()) == b"second reply"
    thread.join(10)


def test_async_requests_waiting_when_the_server_closes() -> None:
    server = INETSocket.listen_on("127.0.0.1:0")
    thread = accept_one(server, lambda client: (client.readline(), client.print("only one")))

    async def main() -> list[bytes | BaseException]:
        async with AsyncLineClient(f"127.0.0.1:{server.sockport}", timeout=10) as client:
            return await asyncio.gather(client.request(b"1"), client.request(b"2"),
                                        return_exceptions=True)

    with server:
        first, second = asyncio.run(main())
    assert first == b"only one"
    assert isinstance(second, ConnectionClosed)
    thread.join(10)


def test_factorize_needs_no_network() -> None:
    assert factorize(42) == [2, 3, 7]
    assert factorize(2**64 + 1) == [274177, 67280421310721]


# -- tcpkit.testing: any service on an ephemeral port -----------------------------------

FAILURES = [ZeroDivisionError, KeyError, RuntimeError, AttributeError, ValueError, OSError]


def shout(line: bytes) -> bytes:
    if line == b"forbidden":
        raise RequestError("that word is forbidden")
    if line.startswith(b"crash"):
        raise random.choice(FAILURES)("a bug in the service")
    return line.upper()


SHOUT = Service("shout", 7802, "upper-cases each line", shout)


def test_running_serves_a_service_defined_in_the_test() -> None:
    with running(SHOUT) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        with INETSocket.connect(server.endpoint, timeout=10) as sock:
            sock.print("hi", "forbidden", "crash 1", "still here", "crash 2")
            sock.shutdown_write()
            assert list(sock) == [
                b"HI\n", b"error: that word is forbidden\n", b"error: internal error\n",
                b"STILL HERE\n", b"error: internal error\n"]
    with pytest.raises(ConnectError):  # stopped when the block ended
        INETSocket.connect(server.endpoint, timeout=5)


def test_tcpkit_server_fixture(tcpkit_server: Callable[..., RunningServer]) -> None:
    shouting = tcpkit_server(SHOUT)
    limited = tcpkit_server(SHOUT, Limits(max_line=4))
    with INETSocket.connect(shouting.endpoint, timeout=10) as sock:
        sock.print("fixture")
        assert sock.readline() == b"FIXTURE\n"
    with INETSocket.connect(limited.endpoint, timeout=10) as sock:
        sock.print("ok", "too long")
        assert list(sock) == [b"OK\n", b"error: line too long (max 4 bytes)\n"]


def test_closed_connection_is_reported() -> None:
    with running(SHOUT, Limits(max_line=2)) as server, ReverseClient(server.endpoint) as client:
        assert client.reverse("far too long") == "error: line too long (max 2 bytes)"
        with pytest.raises((ConnectionClosed, ConnectionResetError, BrokenPipeError)):
            client.reverse("ok")
