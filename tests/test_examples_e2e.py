"""The example services (examples/*) end to end: real ``tcpkit serve`` processes on
loopback, in every mode each claims, with real peers (nc, socat, perl IO::Socket::INET).

The examples are laid out as installed plug-ins (``helpers.examples.install_examples``), so
the server finds them through the ``tcpkit.services`` entry points, exactly as after
``pip install examples/NAME``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Protocol

import pytest

from helpers.examples import install_examples
from helpers.net import LinePeer, connect, exchange, recv_until_closed
from helpers.processes import rss_kb, tree_total
from helpers.servers import Server, Servers, needs, run, script

MODES = ["async", "thread", "fork", "iterative"]  # daytime, mail, netstring
SHARED = ["async", "thread"]  # kv and chat: one process holds their shared state
ISO_SECONDS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\n")


class Start(Protocol):
    def __call__(self, service: str, mode: str, *args: str) -> Server: ...


@pytest.fixture(scope="module")
def examples_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return install_examples(tmp_path_factory.mktemp("examples"),
                            "daytime", "kv", "chat", "mail", "netstring")


@pytest.fixture
def serve(examples_env: dict[str, str]) -> Iterator[Start]:
    servers = Servers(env=examples_env)
    yield servers.in_mode
    servers.stop_all()


def stopped_cleanly(server: Server) -> None:
    assert server.stop() == 0
    assert "Traceback" not in server.stderr(), server.stderr()


# -- daytime -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_daytime_one_line_then_close(mode: str, serve: Start) -> None:
    server = serve("daytime", mode)
    with connect(server.port) as sock:
        assert ISO_SECONDS.fullmatch(recv_until_closed(sock))
    stopped_cleanly(server)


@needs("nc")
def test_daytime_with_nc(serve: Start) -> None:
    server = serve("daytime", "async")
    done = run(["nc", "127.0.0.1", str(server.port)], timeout=30)
    assert ISO_SECONDS.fullmatch(done.stdout), done
    stopped_cleanly(server)


# -- mail --------------------------------------------------------------------------

MAIL_DIALOG = (b"HELO me\r\nMAIL FROM:<a@example>\r\nRCPT TO:<b@example>\r\nDATA\r\n"
               b"Hi Bob,\r\n..dotted\r\n.\r\nEHLO x\r\nQUIT\r\nHELO after quit\r\n")
MAIL_REPLIES = (b"220 tcpkit ready\r\n250 hello me\r\n250 ok\r\n250 ok\r\n354 end with .\r\n"
                b"250 queued 2 lines\r\n500 unknown command\r\n221 bye\r\n")


@pytest.mark.parametrize("mode", MODES)
def test_mail_dialog(mode: str, serve: Start) -> None:
    server = serve("mail", mode)
    with connect(server.port) as sock:
        sock.sendall(MAIL_DIALOG)  # pipelined: the server closes after QUIT by itself
        assert recv_until_closed(sock) == MAIL_REPLIES
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", MODES)
def test_mail_line_too_long_is_500(mode: str, serve: Start) -> None:
    server = serve("mail", mode, "--max-line", "64")
    mail = LinePeer(server.port)
    assert mail.line() == b"220 tcpkit ready\r"
    mail.send(b"HELO me", b"x" * 100, b"QUIT", end=b"\r\n")
    assert mail.rest() == b"250 hello me\r\n500 line too long\r\n"  # then closed
    mail.close()
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", MODES)
def test_mail_refusals_are_421(mode: str, serve: Start) -> None:
    """The gate turns a client away in the service's syntax (errors=), not tcpkit's."""
    server = serve("mail", mode, "--deny", "127.0.0.1")
    assert exchange(server.port, b"HELO me\r\n") == b"421 access denied\r\n"
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", ["async", "thread", "fork"])  # iterative: one at a time anyway
def test_mail_busy_is_421(mode: str, serve: Start) -> None:
    server = serve("mail", mode, "--max-connections", "1")
    held = LinePeer(server.port)
    assert held.line() == b"220 tcpkit ready\r"  # served, so counted open
    assert exchange(server.port, b"HELO me\r\n") == b"421 server busy\r\n"
    held.close()
    stopped_cleanly(server)


@needs("perl")
def test_mail_with_perl_io_socket_inet(serve: Start) -> None:
    """A Perl client, line by line as a mail client talks (wait for each reply)."""
    server = serve("mail", "fork")
    code = r"""
        use IO::Socket::INET;
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ARGV[0]", Timeout => 20) or die;
        print scalar <$s>;
        for my $line ("HELO perl", "MAIL FROM:<p\@example>", "DATA", "body", ".", "QUIT") {
            print $s "$line\r\n";
            print scalar <$s> unless $line eq "body";
        }
    """
    done = run(["perl", "-e", code, str(server.port)], timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (b"220 tcpkit ready\r\n250 hello perl\r\n250 ok\r\n354 end with .\r\n"
                           b"250 queued 1 lines\r\n221 bye\r\n")
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", MODES)
def test_mail_drains_on_sigterm(mode: str, serve: Start) -> None:
    """SIGTERM while a client is mid-dialog: its replies so far arrive, then the server
    closes the connection and exits 0."""
    server = serve("mail", mode, "--drain-timeout", "30")
    mail = LinePeer(server.port)
    assert mail.line() == b"220 tcpkit ready\r"
    mail.send(b"HELO me", b"DATA", end=b"\r\n")
    assert mail.line() == b"250 hello me\r"
    assert mail.line() == b"354 end with .\r"
    server.process.send_signal(signal.SIGTERM)
    assert mail.rest() == b""  # closed, nothing half-written
    mail.close()
    assert server.process.wait(30) == 0
    assert "Traceback" not in server.stderr()


# -- netstring ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_netstring_reverses_payloads(mode: str, serve: Start) -> None:
    server = serve("netstring", mode)
    with connect(server.port) as sock:
        sock.sendall(b"5:hello,0:,")
        sock.sendall(b"3:a\nb,1")  # a payload may hold LF; a header may be split
        sock.sendall(b"1:hello world,")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b"5:olleh,0:,3:b\na,11:dlrow olleh,"
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", MODES)
def test_a_malformed_netstring_closes_the_connection(mode: str, serve: Start) -> None:
    server = serve("netstring", mode)
    with connect(server.port) as sock:
        sock.sendall(b"2:ok,5:hello;2:no,")  # no shutdown: the server closes by itself
        assert recv_until_closed(sock) == b"2:ko,26:error: malformed netstring,"
    stopped_cleanly(server)


@needs("socat")
def test_netstring_with_socat(serve: Start) -> None:
    server = serve("netstring", "thread")
    done = run(["socat", "-t", "10", "-", f"TCP:127.0.0.1:{server.port}"],
               stdin=b"3:abc,4:tcp!,", timeout=30)
    assert done.stdout == b"3:cba,4:!pct,", done
    stopped_cleanly(server)


# -- kv ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", SHARED)
def test_kv_state_shared_by_every_connection(mode: str, serve: Start) -> None:
    server = serve("kv", mode)
    writer, reader = LinePeer(server.port), LinePeer(server.port)
    writer.send(b"SET greeting hello there", b"SET gone soon", b"DEL gone")
    assert [writer.line() for _ in range(3)] == [b"OK", b"OK", b"OK"]
    reader.send(b"GET greeting", b"GET gone", b"DEL gone", b"FROB", b"QUIT", b"GET greeting")
    assert [reader.line() for _ in range(5)] == [
        b"hello there", b"error: no such key: gone", b"error: no such key: gone",
        b"error: unknown command", b"bye"]
    assert reader.rest() == b""  # closed after bye; the line after QUIT was ignored
    writer.send(b"GET greeting")
    assert writer.line() == b"hello there"  # the writer's connection is still open
    writer.close()
    reader.close()
    stopped_cleanly(server)


@needs("nc")
def test_kv_with_nc(serve: Start) -> None:
    server = serve("kv", "async")
    done = run(["nc", "127.0.0.1", str(server.port)], stdin=b"SET a 1 2 3\nGET a\nQUIT\n",
               timeout=30)
    assert done.stdout == b"OK\n1 2 3\nbye\n", done
    stopped_cleanly(server)


@pytest.mark.parametrize("service", ["kv", "chat"])
@pytest.mark.parametrize("split", [["--mode", "fork"], ["--workers", "2"],
                                   ["--mode", "thread", "--workers", "3"]])
def test_shared_state_cannot_be_split_without_redis(service: str, split: list[str],
                                                    examples_env: dict[str, str]) -> None:
    done = subprocess.run([*script("tcpkit"), "serve", service, "--listen", "127.0.0.1:0",
                           *split], env={**os.environ, **examples_env}, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"error: {service} " in lines[0] and "cannot run with" in lines[0]
    assert "--pubsub redis://" in lines[0]


@pytest.mark.parametrize("split", [["--mode", "fork"], ["--workers", "2"]])
def test_kv_in_process_state_is_not_split_even_with_redis(
        split: list[str], examples_env: dict[str, str]) -> None:
    """kv's dict lives in one process: a shared hub shares rooms, not that dict."""
    done = subprocess.run([*script("tcpkit"), "serve", "kv", "--listen", "127.0.0.1:0",
                           "--pubsub", "redis://127.0.0.1:9", *split],
                          env={**os.environ, **examples_env}, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "kv keeps state shared by its connections in one process" \
        in lines[0], lines


# -- chat --------------------------------------------------------------------------


def join(port: int) -> tuple[LinePeer, bytes]:
    """A chat member and its name (from the welcome line)."""
    member = LinePeer(port)
    welcome = member.line()
    assert re.fullmatch(rb"welcome guest\d+", welcome), welcome
    return member, welcome.removeprefix(b"welcome ")


@pytest.mark.parametrize("mode", SHARED)
def test_chat_room(mode: str, serve: Start) -> None:
    server = serve("chat", mode)
    ann, ann_guest = join(server.port)
    bob, bob_guest = join(server.port)
    assert ann_guest != bob_guest
    assert ann.line() == b"* " + bob_guest + b" joined"
    ann.send(b"NICK ann")
    assert ann.line() == b"you are now ann"
    bob.send(b"NICK ann", b"NICK bob")
    assert bob.line() == b"error: nickname taken"
    assert bob.line() == b"you are now bob"
    ann.send(*[b"line %d" % n for n in range(50)])
    assert [bob.line() for _ in range(50)] == [b"ann: line %d" % n for n in range(50)]
    bob.send(b"bye ann", b"QUIT", b"unsent")
    assert bob.line() == b"bye"
    assert bob.rest() == b""
    assert ann.line() == b"bob: bye ann"  # not "unsent": input after QUIT is ignored
    assert ann.line() == b"* bob left"
    carl, _ = join(server.port)
    carl.send(b"NICK bob")  # bob's name was released when he left
    assert carl.line() == b"you are now bob"
    for member in (ann, bob, carl):
        member.close()
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", SHARED)
def test_chat_member_that_never_reads_is_dropped(mode: str, serve: Start) -> None:
    """A member that never reads is dropped past the 1 MiB cap; the others see it leave,
    keep chatting, and the server's memory stays flat."""
    server = serve("chat", mode)
    talker, _ = join(server.port)
    deaf = socket.socket()
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little kernel buffering
    deaf.connect(("127.0.0.1", server.port))
    deaf_name = talker.line().removeprefix(b"* ").removesuffix(b" joined")
    before = tree_total(server.pid, rss_kb)
    chunk = b"x" * 60_000
    line = b""
    for _ in range(40):  # up to 96 MB for the deaf member, who reads nothing
        talker.send(*[chunk] * 40)
        talker.send(b"NICK talker")  # a reply marks where the server has got to
        line = talker.line()
        if line != b"you are now talker":
            break
    assert line == b"* " + deaf_name + b" left", "the deaf member was never dropped"
    assert talker.line() == b"you are now talker"
    grown = tree_total(server.pid, rss_kb) - before
    assert grown < 48 * 1024, f"server memory grew by {grown} kB"
    server.wait_for_stderr(r"dropped 127\.0\.0\.1:\d+ \(chat\): send buffer full")
    other, other_name = join(server.port)  # the room goes on
    assert talker.line() == b"* " + other_name + b" joined"
    other.send(b"still here")
    assert talker.line() == other_name + b": still here"
    for sock in (deaf, talker.sock, other.sock):
        sock.close()
    stopped_cleanly(server)


@pytest.mark.parametrize("mode", SHARED)
def test_chat_drains_on_sigterm(mode: str, serve: Start) -> None:
    server = serve("chat", mode, "--drain-timeout", "30")
    ann, _ = join(server.port)
    bob, bob_guest = join(server.port)
    assert ann.line() == b"* " + bob_guest + b" joined"
    server.process.send_signal(signal.SIGTERM)
    for member in (ann, bob):
        assert member.rest() in (b"", b"* guest1 left\n", b"* guest2 left\n")
        member.close()
    assert server.process.wait(30) == 0
    assert "Traceback" not in server.stderr()
