"""tcpkit against other programs: nc and Perl IO::Socket::INET, in both directions.

The Perl programs in ``tests/peers/`` are written as the article writes them
(IO::Socket::INET, Listen, an accept loop; a client that prints each reply).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from helpers.servers import PEERS, Server, needs, run, script, start_server

Serve = Callable[..., Server]
PERL = needs("perl")
NC = needs("nc")


def perl(program: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return run(["perl", str(PEERS / program), *args], stdin)


@pytest.fixture(scope="module")
def tcpkit_servers() -> Iterator[Server]:
    server = start_server([*script("tcpkit"), "serve", "--listen", "reverse=127.0.0.1:0",
                           "--listen", "factor=127.0.0.1:0"], services=2)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def perl_servers() -> Iterator[dict[str, int]]:
    started = {name: start_server(["perl", str(PEERS / f"{name}_server.pl"), "0"])
               for name in ("reverse", "factor")}
    yield {name: server.port for name, server in started.items()}
    for server in started.values():
        server.stop(signal.SIGKILL)


# -- peers talking to tcpkit ----------------------------------------------------------


def nc(server: Server, service: str, stdin: bytes) -> bytes:
    result = run(["nc", "-N", "127.0.0.1", str(server.ports[service])], stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


@NC
@pytest.mark.parametrize(("service", "stdin", "stdout"), [
    ("reverse", b"hello\r\nnc\n\nlast", b"olleh\r\ncn\n\ntsal\n"),
    ("factor", b"42\nabc\n-42\n1\n", b'2 3 7\nerror: not an integer: "abc"\n-1 2 3 7\n\n'),
])
def test_nc(tcpkit_servers: Server, service: str, stdin: bytes, stdout: bytes) -> None:
    assert nc(tcpkit_servers, service, stdin) == stdout


@NC
def test_nc_pipelines_10000_lines(tcpkit_servers: Server) -> None:
    lines = [b"nc line %d" % i for i in range(10_000)]
    reply = nc(tcpkit_servers, "reverse", b"\n".join(lines) + b"\n")
    assert reply == b"".join(line[::-1] + b"\n" for line in lines)


@PERL
def test_perl_client_reverse(tcpkit_servers: Server) -> None:
    port = str(tcpkit_servers.ports["reverse"])
    result = perl("reverse_client.pl", "127.0.0.1", port, stdin=b"hello\nperl\r\n")
    assert (result.returncode, result.stdout) == (0, b"olleh\nlrep\r\n"), result.stderr
    lines = b"".join(b"pipelined %d\n" % i for i in range(5000))
    result = perl("reverse_client.pl", "--pipeline", "127.0.0.1", port, stdin=lines)
    assert result.stdout == b"".join(line[::-1] + b"\n" for line in lines.splitlines())


@PERL
def test_perl_client_factor(tcpkit_servers: Server) -> None:
    port = str(tcpkit_servers.ports["factor"])
    assert perl("factor_client.pl", "127.0.0.1", port, "42").stdout == b"2 3 7\n"
    result = perl("factor_client.pl", "localhost", port, "0")
    assert (result.returncode, result.stdout) == (1, b"error: 0 has no prime factorization\n")


@PERL
def test_perl_clients_against_the_article_servers() -> None:
    reverse_s = start_server([*script("reverseS"), "0"])
    factor_s = start_server([*script("factorS"), "0"])
    try:
        result = perl("reverse_client.pl", "127.0.0.1", str(reverse_s.port), stdin=b"abc\n")
        assert result.stdout == b"cba\n"
        result = perl("factor_client.pl", "127.0.0.1", str(factor_s.port), "1001")
        assert result.stdout == b"7 11 13\n"
    finally:
        assert reverse_s.stop(signal.SIGINT) == 0
        assert factor_s.stop(signal.SIGINT) == 0


# -- tcpkit talking to Perl servers ------------------------------------------------------


@PERL
def test_tcpkit_reverse_against_perl(perl_servers: dict[str, int]) -> None:
    lines = b"".join(b"to perl %d\n" % i for i in range(2000))
    result = run([*script("tcpkit"), "reverse", f"127.0.0.1:{perl_servers['reverse']}"], lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(line[::-1] + b"\n" for line in lines.splitlines())


@PERL
def test_reverse_client_program_against_perl(perl_servers: dict[str, int]) -> None:
    result = run([*script("reverseC"), "127.0.0.1", str(perl_servers["reverse"])],
                 b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"socket\nbind\nconnect\nolleh\ndlrow\nclose\n"


@PERL
def test_tcpkit_factor_against_perl(perl_servers: dict[str, int]) -> None:
    server = f"127.0.0.1:{perl_servers['factor']}"
    result = run([*script("tcpkit"), "factor", "-s", server, "--show-number",
                  "42", "97", "1024", "-6"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"42: 2 3 7\n97: 97\n1024: 2 2 2 2 2 2 2 2 2 2\n-6: -1 2 3\n"
    result = run([*script("tcpkit"), "factor", "-s", server, "12", "x"])
    assert (result.returncode, result.stdout) == (1, b"2 2 3\n")
    assert result.stderr == b'x: error: not an integer: "x"\n'


@PERL
def test_factor_client_program_against_perl(perl_servers: dict[str, int]) -> None:
    result = run([*script("factorC"), "127.0.0.1", str(perl_servers["factor"]), "42"])
    assert (result.returncode, result.stdout) == (0, b"2 3 7\n"), result.stderr


@PERL
def test_library_clients_against_perl(perl_servers: dict[str, int]) -> None:
    from tcpkit import FactorClient, ReverseClient

    with FactorClient(f"127.0.0.1:{perl_servers['factor']}") as client:
        assert client.factor(360) == [2, 2, 2, 3, 3, 5]
    with ReverseClient(f"127.0.0.1:{perl_servers['reverse']}") as client:
        assert client.reverse("library") == "yrarbil"
