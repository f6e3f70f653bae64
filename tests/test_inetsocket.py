"""IO::Socket::INET parity: every row of docs/inetsocket.md, against a real socket.

The table is read from the document, and each row must have its check here
(``ROWS``), so the document and the tests cannot drift apart.  Several checks
use Perl's own IO::Socket::INET as the peer.
"""

from __future__ import annotations

import select
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.net import free_ports
from helpers.servers import needs, run
from tcpkit import INETSocket
from tcpkit.services import reverse
from tcpkit.serving.listeners import ListenError
from tcpkit.sockets import ConnectError
from tcpkit.testing import RunningServer

DOC = Path(__file__).parent.parent / "docs" / "inetsocket.md"
Check = Callable[[Callable[..., RunningServer]], None]
ROWS: dict[str, Check] = {}

PERL_UDP_CLIENT = """use IO::Socket::INET; alarm 20;
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ARGV[0]", Proto => 'udp') or die "$@";
$s->send($ARGV[1]); $s->recv(my $reply, 1024); print $reply, " from ", $s->sockport, "\\n";"""
PERL_UDP_ECHO = """use IO::Socket::INET; alarm 20; $| = 1;
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'udp')
    or die "$@";
print $s->sockport, "\\n"; $s->recv(my $data, 1024); $s->send(scalar reverse $data);"""
PERL_TCP_CLIENT = """use IO::Socket::INET; alarm 20;
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ARGV[0], Proto => 'tcp')
    or die "$@";
print $s "$ARGV[1]\\n"; $s->shutdown(1); print while <$s>;"""


def row(name: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        ROWS[name] = check
        return check
    return register


def table_rows() -> list[str]:
    lines = DOC.read_text().splitlines()
    return [line.split("|")[1].strip() for line in lines
            if line.startswith("| ") and not line.startswith("| Perl ")]


def reverse_server(start: Callable[..., RunningServer]) -> RunningServer:
    return start(reverse.SERVICE)


def talks_reverse(sock: INETSocket) -> None:
    sock.print("hello")
    assert sock.readline() == b"olleh\n"


def perl(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["perl", "-e", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def perl_output(process: subprocess.Popen[bytes]) -> str:
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return out.decode()


def serve_one_perl_client(server: INETSocket) -> str:
    """Accept Perl's IO::Socket::INET client; reverse its line; its output."""
    client_process = perl(PERL_TCP_CLIENT, str(server.sockport), "perl")
    with server.accept() as client:
        assert client.peerhost == "127.0.0.1"
        client.print(client.readline().rstrip(b"\n")[::-1])
    return perl_output(client_process)


def refused_port() -> int:
    return free_ports()[0]


# -- the options ---------------------------------------------------------------------


@row('`new("host:port")`')
def one_positional_argument(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(reverse_server(start).endpoint) as sock:
        talks_reverse(sock)
    with pytest.raises(TypeError, match="one positional argument"):
        INETSocket.new("a:1", "b:2")


@row("`PeerAddr`")
def peer_addr(start: Callable[..., RunningServer]) -> None:
    server = reverse_server(start)
    for options in ({"PeerAddr": server.endpoint},
                    {"PeerAddr": "127.0.0.1", "PeerPort": server.port},
                    {"PeerAddr": "127.0.0.1", "PeerPort": str(server.port)}):
        with INETSocket.new(**options) as sock:
            talks_reverse(sock)
    with pytest.raises(ValueError, match=r"PeerAddr '127\.0\.0\.1' needs a port"):
        INETSocket.new(PeerAddr="127.0.0.1")


@row("`PeerHost`")
def peer_host(start: Callable[..., RunningServer]) -> None:
    server = reverse_server(start)
    with INETSocket.new(PeerHost="localhost", PeerPort=server.port) as sock:
        assert sock.connected == ("127.0.0.1", server.port)  # a client, not a listener
        talks_reverse(sock)


@row("`PeerPort`")
def peer_port(start: Callable[..., RunningServer]) -> None:
    server = reverse_server(start)
    with INETSocket.new(PeerAddr="127.0.0.1", PeerPort=f"no-such-name({server.port})") as sock:
        talks_reverse(sock)  # Perl's fallback: the number when the name is unknown
    with pytest.raises(ValueError, match="PeerPort 'no-such-name': unknown port"):
        INETSocket.new(PeerAddr="127.0.0.1", PeerPort="no-such-name")


@row("`LocalAddr`")
def local_addr(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1:0", Listen=5) as server:
        assert server.sockhost == "127.0.0.1"
        assert serve_one_perl_client(server) == "lrep\n"
        (port,) = free_ports()
        with INETSocket.new(PeerAddr=f"127.0.0.1:{server.sockport}",
                            LocalAddr=f"127.0.0.1:{port}") as client, \
                server.accept() as accepted:  # the client bound its own end first
            assert accepted.peerport == port == client.sockport


@row("`LocalHost`")
def local_host(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalHost="127.0.0.1", LocalPort=0, Listen=5) as server:
        assert (server.sockhost, server.socktype) == ("127.0.0.1", socket.SOCK_STREAM)
        assert serve_one_perl_client(server) == "lrep\n"


@row("`LocalPort`")
def local_port(start: Callable[..., RunningServer]) -> None:
    (port,) = free_ports()
    with INETSocket.new(LocalPort=str(port), Listen=5) as server:
        assert server.sockport == port and server.sockhost in ("::", "0.0.0.0")
        assert serve_one_perl_client(server) == "lrep\n"


@row("`Proto`")
def proto(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1", LocalPort=0, Proto="udp") as server:
        assert server.socktype == socket.SOCK_DGRAM
        client = perl(PERL_UDP_CLIENT, str(server.sockport), "ping")
        assert select.select([server], [], [], 20)[0]
        assert server.recv(512) == b"ping"
        sender = server.peerport  # Perl's peername after recv: the sender
        assert server.send(b"pong") == 4  # back to the sender, as Perl's send does
        assert perl_output(client) == f"pong from {sender}\n"
    with INETSocket.new(LocalAddr="127.0.0.1", LocalPort=0, Proto=6) as tcp:
        assert tcp.socktype == socket.SOCK_STREAM
    with pytest.raises(ValueError, match="Proto 'icmp'"):
        INETSocket.new(PeerAddr="127.0.0.1:7", Proto="icmp")


@row("`Type`")
def socket_type(start: Callable[..., RunningServer]) -> None:
    echo = perl(PERL_UDP_ECHO)
    assert echo.stdout is not None
    port = int(echo.stdout.readline())
    with INETSocket.new(PeerAddr=f"127.0.0.1:{port}", Type=socket.SOCK_DGRAM) as sock:
        assert sock.send("olleh") == 5
        assert select.select([sock], [], [], 20)[0]
        assert sock.recv(512) == b"hello"
    perl_output(echo)
    with pytest.raises(ValueError, match=r"Type .*SOCK_RAW"):
        INETSocket.new(PeerAddr="127.0.0.1:7", Type=socket.SOCK_RAW)
    with pytest.raises(ValueError, match="contradicts Proto 'tcp'"):
        INETSocket.new(PeerAddr="127.0.0.1:7", Type=socket.SOCK_DGRAM, Proto="tcp")


@row("`Listen`")
def listen(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1", LocalPort=0) as bound, \
            pytest.raises(ConnectionRefusedError):  # no Listen: bound, not listening
        socket.create_connection(("127.0.0.1", bound.sockport), timeout=10)
    with INETSocket.new(LocalAddr="127.0.0.1", LocalPort=0, Listen=0) as server:
        assert serve_one_perl_client(server) == "lrep\n"
    with pytest.raises(ValueError, match=r"Listen needs a TCP socket"):
        INETSocket.new(LocalPort=0, Listen=5, Proto="udp")
    with pytest.raises(ValueError, match="Listen and PeerAddr"):
        INETSocket.new(PeerAddr="127.0.0.1:7", Listen=5)


def reuse_addr_is_set_only_when_asked(name: str) -> None:
    for value, expected in ((1, True), (0, False), (None, False)):
        options: dict[str, Any] = {"LocalAddr": "127.0.0.1:0", "Listen": 5}
        if value is not None:
            options[name] = value
        with INETSocket.new(**options) as sock:
            assert bool(sock.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)) is expected


@row("`ReuseAddr`")
def reuse_addr(start: Callable[..., RunningServer]) -> None:
    reuse_addr_is_set_only_when_asked("ReuseAddr")


@row("`Reuse`")
def reuse(start: Callable[..., RunningServer]) -> None:
    reuse_addr_is_set_only_when_asked("Reuse")


@row("`ReusePort`")
def reuse_port(start: Callable[..., RunningServer]) -> None:
    (port,) = free_ports()
    where = {"LocalAddr": "127.0.0.1", "LocalPort": port, "Listen": 5}
    with INETSocket.new(**where, ReusePort=1) as first, \
            INETSocket.new(**where, ReusePort=1) as second:
        assert first.sockport == second.sockport == port
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}: "
                                              "Address already in use"):
            INETSocket.new(**where)


@row("`Broadcast`")
def broadcast(start: Callable[..., RunningServer]) -> None:
    for options, expected in (({"Broadcast": 1}, 1), ({}, 0)):
        with INETSocket.new(LocalAddr="127.0.0.1:0", Proto="udp", **options) as sock:
            assert sock.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == expected


@row("`Timeout`")
def timeout_option(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1:0", Listen=5, Timeout=0.5) as server, \
            pytest.raises(TimeoutError, match="accept timed out"):
        server.accept()  # no client: bounded by Timeout
    with socket.socket() as full:  # a full accept queue never completes a handshake
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        try:
            with pytest.raises(ConnectError, match="timed out"):
                INETSocket.new(PeerAddr="127.0.0.1", PeerPort=full.getsockname()[1], Timeout=1)
        finally:
            for filler in fillers:
                filler.close()
    server_ = reverse_server(start)
    with INETSocket.new(server_.endpoint, Timeout=5) as sock:
        assert sock.sock.gettimeout() is None  # reads block, as in Perl
        talks_reverse(sock)
    with pytest.raises(ValueError, match="Timeout -1"):
        INETSocket.new(server_.endpoint, Timeout=-1)


@row("`MultiHomed`")
def multihomed(start: Callable[..., RunningServer]) -> None:
    """A name with two addresses (here: one refuses, one serves) via a test resolver."""
    server = reverse_server(start)
    dead = refused_port()
    real = socket.getaddrinfo

    def two_addresses(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "two.test":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", dead)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port))]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", two_addresses)
        with pytest.raises(ConnectError, match="Connection refused"):
            INETSocket.new(PeerAddr="two.test", PeerPort=server.port)  # the first only
        with INETSocket.new(PeerAddr="two.test", PeerPort=server.port, MultiHomed=1) as sock:
            assert sock.peerport == server.port
            talks_reverse(sock)


@row("`Blocking`")
def blocking(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1:0", Listen=5, Blocking=0) as server:
        assert not server.sock.getblocking()
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody waiting: at once, not a hang
        with INETSocket.new(PeerAddr=f"127.0.0.1:{server.sockport}", Blocking=0) as client:
            assert not client.sock.getblocking()
            assert select.select([], [client], [], 20)[1]  # the connect completes
            assert select.select([server], [], [], 20)[0]
            with server.accept() as accepted:
                assert accepted.peerport == client.sockport


@row("any other option")
def unknown_option(start: Callable[..., RunningServer]) -> None:
    with pytest.raises(ValueError, match=r"no option 'PeerAdr' \(did you mean PeerAddr\?\)"):
        INETSocket.new(PeerAdr="127.0.0.1:7800")
    with pytest.raises(ValueError, match="no option 'Domain'"):
        INETSocket.new(LocalPort=0, Listen=5, Domain=socket.AF_INET)


# -- the methods ---------------------------------------------------------------------


@row("`$sock->accept`")
def accept(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1:0", Listen=5, Timeout=7) as server, \
            INETSocket.new(PeerAddr=f"127.0.0.1:{server.sockport}"), server.accept() as client:
        assert isinstance(client, INETSocket) and client.timeout() == 7


@row("`$sock->sockaddr`")
def sockaddr(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(reverse_server(start).endpoint) as sock:
        assert sock.sockaddr == socket.inet_aton("127.0.0.1")


@row("`$sock->sockhost`, `sockport`")
def sockhost(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalHost="127.0.0.1", LocalPort=0, Listen=5) as server:
        assert server.sockhost == "127.0.0.1" and server.sockport > 0


@row("`$sock->peeraddr`")
def peeraddr(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(reverse_server(start).endpoint) as sock:
        assert sock.peeraddr == socket.inet_aton("127.0.0.1")


@row("`$sock->peerhost`, `peerport`")
def peerhost(start: Callable[..., RunningServer]) -> None:
    server = reverse_server(start)
    with INETSocket.new(server.endpoint) as sock:
        assert (sock.peerhost, sock.peerport) == ("127.0.0.1", server.port)


@row("`$sock->connected`")
def connected(start: Callable[..., RunningServer]) -> None:
    server = reverse_server(start)
    with INETSocket.new(server.endpoint) as sock:
        assert sock.connected == ("127.0.0.1", server.port)
    with INETSocket.new(LocalAddr="127.0.0.1:0", Listen=5) as listener:
        assert listener.connected is None
    with INETSocket.new(Proto="udp") as unbound:  # made, neither bound nor connected
        assert unbound.connected is None


@row("`$sock->shutdown(HOW)`")
def shutdown(start: Callable[..., RunningServer]) -> None:
    server = reverse_server(start)
    with INETSocket.new(server.endpoint) as sock:
        sock.print("abc")
        sock.shutdown(1)  # half-close: the replies still come, then the end
        assert list(sock) == [b"cba\n"]
    with INETSocket.new(server.endpoint) as sock:
        sock.shutdown(2)  # both ways: nothing more to read, nothing may be written
        assert sock.readline() == b""
        with pytest.raises(BrokenPipeError):
            sock.print("too late")
        with pytest.raises(ValueError, match="HOW is 0"):
            sock.shutdown(3)


@row("`$sock->timeout([VAL])`")
def timeout_method(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="127.0.0.1:0", Listen=5, Timeout=3) as server:
        assert server.timeout() == 3.0
        assert server.timeout(0.2) == 3.0 and server.timeout() == 0.2
        with pytest.raises(TimeoutError):
            server.accept()


@row("`$sock->send(MSG [, FLAGS, TO])`")
def send(start: Callable[..., RunningServer]) -> None:
    echo = perl(PERL_UDP_ECHO)
    assert echo.stdout is not None
    port = int(echo.stdout.readline())
    with INETSocket.new(LocalAddr="127.0.0.1", LocalPort=0, Proto="udp") as sock:
        assert sock.send(b"ih", to=f"127.0.0.1:{port}") == 2
        assert select.select([sock], [], [], 20)[0]
        assert sock.recv(64) == b"hi" and sock.peerport == port
    perl_output(echo)


@row("`$sock->recv(BUF, LEN)`")
def recv(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(LocalAddr="[::1]:0" if socket.has_ipv6 else "127.0.0.1:0",
                        Proto="udp") as sock, socket.socket(sock.sock.family,
                                                            socket.SOCK_DGRAM) as peer:
        peer.sendto(b"one", sock.sock.getsockname())
        peer.sendto(b"two", sock.sock.getsockname())
        assert select.select([sock], [], [], 20)[0]
        assert (sock.recv(64), sock.recv(64)) == (b"one", b"two")  # a datagram each


@row("`$sock->socktype`")
def socktype(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(Proto="udp") as udp, INETSocket.new(LocalPort=0, Listen=5) as tcp:
        assert (udp.socktype, tcp.socktype) == (socket.SOCK_DGRAM, socket.SOCK_STREAM)


@row("`print $sock ...`, `<$sock>`, `close`")
def line_io(start: Callable[..., RunningServer]) -> None:
    with INETSocket.new(reverse_server(start).endpoint) as sock:
        sock.print("one", "two")
        sock.shutdown(1)
        assert [line for line in sock] == [b"eno\n", b"owt\n"]
    with pytest.raises(ValueError, match="closed"):
        sock.readline()  # closed with the block


# -- the table, and the rows --------------------------------------------------------------


def test_every_row_of_the_table_has_its_check() -> None:
    assert table_rows() == list(ROWS)


@needs("perl")
@pytest.mark.parametrize("name", table_rows())
def test_row(name: str, tcpkit_server: Callable[..., RunningServer]) -> None:
    ROWS[name](tcpkit_server)


def test_the_module_docstring_runs() -> None:
    """The docstring's example is a doctest over real loopback sockets."""
    import doctest

    import tcpkit.sockets

    result = doctest.testmod(tcpkit.sockets, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_perl_itself_agrees_on_the_udp_exchange() -> None:
    """Sanity of the peers: Perl's UDP client and echo server talk to each other."""
    echo = perl(PERL_UDP_ECHO)
    assert echo.stdout is not None
    port = echo.stdout.readline().decode().strip()
    done = run(["perl", "-e", PERL_UDP_CLIENT, port, "abc"], timeout=30)
    assert done.stdout.decode().startswith("cba from ")
    perl_output(echo)
