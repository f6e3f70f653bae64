"""``tcpkit serve --config FILE``: real servers configured by a TOML file, and its mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.net import connect, exchange, recv_until_closed
from helpers.servers import TESTS, run, script

CONFIG = """\
mode = "thread"
max-connections = 100

[services.reverse]
listen = "127.0.0.1:0"
max-line = 16

[services.factor]
listen = ["127.0.0.1:0"]
"""


def test_file_sets_mode_listen_and_a_service_s_own_limits(serve, tmp_path: Path) -> None:
    config = tmp_path / "tcpkit.toml"
    config.write_text(CONFIG)
    server = serve("--config", str(config), services=2, listen=False)

    assert "(reverse, mode=thread)" in server.stderr()
    assert "(factor, mode=thread)" in server.stderr()
    assert exchange(server.ports["reverse"], b"short\n") == b"trohs\n"
    with connect(server.ports["reverse"]) as sock:  # reverse's own max-line
        sock.sendall(b"x" * 40 + b"\n")
        assert recv_until_closed(sock).startswith(b"error: line too long (max 16 bytes)")
    # factor keeps the server's max-line: a 40-byte line is fine there
    assert exchange(server.ports["factor"], b"1" * 3 + b" " * 37 + b"\n").startswith(b"3 37")


def test_command_line_wins_over_the_file(serve, tmp_path: Path) -> None:
    config = tmp_path / "tcpkit.toml"
    config.write_text(CONFIG)
    server = serve("--config", str(config), "--mode", "fork", services=2, listen=False)
    assert "(reverse, mode=fork)" in server.stderr()


@pytest.mark.parametrize(("text", "message"), [
    ('mode = "thread"\nmax-conections = 3\n', ":2: max-conections: is not an option"),
    ('max-connections = "100"\n', ":1: max-connections: must be a number, not '100'"),
    ('mode = "sideways"\n', ":1: mode: must be one of async, thread, fork, iterative"),
    ('workers = 0\n', ":1: workers: must be above 0"),
    ('[services.reverse]\nlisten = "127.0.0.1:0"\nmode = "fork"\n',
     ":3: [services.reverse] mode: is not a per-service option"),
    ('[services.reverse]\nmax-line = 1.5\n', ":2: [services.reverse] max-line: must be a number"),
    ('listen = "7000"\n[services.reverse]\n', ":1: listen: conflicts with [services.*]"),
    ('[services.reverse]\ntls-cert = "a.pem"\n', ":2: [services.reverse] tls-cert: tls-cert "
                                                  "and tls-key must be given together"),
    ('[services.nosuch]\n', ": [services.nosuch]: unknown service 'nosuch'"),
    ('[services.reverse]\nmax-per-ip = "3"\n', ":2: [services.reverse] max-per-ip: must be a "
                                                "number, not '3'"),
    ('[services.reverse]\nrate-per-ip = "fast"\n', ":2: [services.reverse] rate-per-ip: not a "
                                                   "rate: 'fast'"),
    ('[services.factor]\ndeny = ["10.0.0.0/33"]\n', ":2: [services.factor] deny: not an "
                                                    "address or CIDR block"),
    ('[services.factor]\nallow = 7\n', ":2: [services.factor] allow: must be a string, not 7"),
    ('[services.factor]\nquiet-deny = "yes"\n', ":2: [services.factor] quiet-deny: must be "
                                                "true or false, not 'yes'"),
    ('[services.factor]\nproxy-protocol = ["192.168.1.7/24"]\n',
     ":2: [services.factor] proxy-protocol: 192.168.1.7/24 has host bits set"),
    ('inetd = true\n[services.reverse]\n\nmax-per-ip = 3\n',
     ":4: [services.reverse] max-per-ip: --inetd serves the one connection on stdin"),
    ('mode = "x', ": Unterminated string"),
])
def test_mistakes_are_usage_errors_naming_file_line_and_key(tmp_path: Path, text: str,
                                                            message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    done = run([*script("tcpkit"), "serve", "--config", str(config), "--check-config"])
    assert done.returncode == 2, done
    err = done.stderr.decode()
    assert f"{config}{message}" in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    config = tmp_path / "tcpkit.toml"
    config.write_text(CONFIG)
    done = run([*script("tcpkit"), "serve", "--config", str(config), "--check-config"])
    assert (done.returncode, done.stdout) == (0, b"config ok\n"), done


@pytest.mark.parametrize("config", sorted((TESTS.parent / "contrib" / "config").glob("*.toml")),
                         ids=lambda path: path.name)
def test_the_shipped_example_files_are_valid(config: Path) -> None:
    """What README and the systemd unit point operators at must itself pass."""
    done = run([*script("tcpkit"), "serve", "--config", str(config), "--check-config"])
    assert (done.returncode, done.stdout) == (0, b"config ok\n"), done


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = run([*script("tcpkit"), "serve", "--config", str(tmp_path / "none.toml")])
    assert done.returncode == 2
    assert b"cannot read config file" in done.stderr


PER_SERVICE_CONNECTIONS = """\
mode = "{mode}"

[services.reverse]
listen = "127.0.0.1:0"
max-connections = 2

[services.factor]
listen = "127.0.0.1:0"
"""


@pytest.mark.parametrize("mode", ["async", "thread"])
def test_max_connections_is_counted_per_service(serve, tmp_path: Path, mode: str) -> None:
    """A held reverse connection does not count against factor's --max-connections 1."""
    config = tmp_path / "tcpkit.toml"
    config.write_text(PER_SERVICE_CONNECTIONS.format(mode=mode))
    server = serve("--config", str(config), "--max-connections", "1", services=2,
                   listen=False)
    with connect(server.ports["reverse"]) as held, connect(server.ports["reverse"]) as other:
        for sock in (held, other):  # served (an answer), so both are counted open
            sock.sendall(b"abc\n")
            assert sock.recv(64) == b"cba\n"
        with connect(server.ports["factor"]) as factor_held:  # factor's one is free
            factor_held.sendall(b"12\n")
            assert factor_held.recv(64).startswith(b"2 2 3")
            # ...and each service is still held to its own limit
            assert exchange(server.ports["factor"], b"12\n") == b"error: server busy\n"
            assert exchange(server.ports["reverse"], b"abc\n") == b"error: server busy\n"


PER_SERVICE_LINES = """\
mode = "async"

[services.reverse]
listen = "127.0.0.1:0"
max-line = 16
idle-timeout = 1

[services.factor]
listen = "127.0.0.1:0"
"""


def test_async_mode_obeys_a_service_s_own_max_line_and_idle_timeout(
        serve, tmp_path: Path) -> None:
    config = tmp_path / "tcpkit.toml"
    config.write_text(PER_SERVICE_LINES)
    server = serve("--config", str(config), services=2, listen=False)
    assert "(reverse, mode=async)" in server.stderr()
    with connect(server.ports["reverse"]) as sock:  # reverse's own max-line
        sock.sendall(b"x" * 40 + b"\n")
        assert recv_until_closed(sock).startswith(b"error: line too long (max 16 bytes)")
    # factor keeps the server's max-line
    assert exchange(server.ports["factor"], b"1" * 3 + b" " * 37 + b"\n").startswith(b"3 37")

    with connect(server.ports["factor"]) as factor, connect(server.ports["reverse"]) as idle:
        factor.sendall(b"12\n")
        assert factor.recv(64).startswith(b"2 2 3")
        idle.sendall(b"abc\n")
        assert idle.recv(64) == b"cba\n"
        # reverse's own idle timeout (1 s) closes it; the socket's 10 s timeout bounds the wait
        assert recv_until_closed(idle) == b""
        # factor has the server's (300 s): its client, idle as long, is still served
        factor.sendall(b"12\n")
        assert factor.recv(64).startswith(b"2 2 3")
