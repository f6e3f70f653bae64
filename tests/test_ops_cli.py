"""``tcpkit serve --check-config`` and the bad option combinations: exit 2, one line,
never a traceback."""

from __future__ import annotations

import pytest

from helpers.servers import run, script, start_server

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    where = tmp_path_factory.mktemp("pem")
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    (where / "junk.pem").write_text("junk\n")
    return {"cert": str(where / "cert.pem"), "key": str(where / "key.pem"),
            "junk": str(where / "junk.pem"), "dir": str(where)}


def serve(*args: str) -> tuple[int, list[str], str]:
    done = run([*script("tcpkit"), "serve", *args])
    return done.returncode, done.stderr.decode().splitlines(), done.stdout.decode()


def test_check_config_ok(pem) -> None:
    status, errors, out = serve(
        "reverse", "factor", "--listen", "reverse=127.0.0.1:7800", "--listen",
        "factor=unix:/tmp/tcpkit-factor.sock", "--tls-cert", pem["cert"], "--tls-key",
        pem["key"], "--metrics", "127.0.0.1:9100", "--max-per-ip", "10", "--rate-per-ip",
        "5/s", "--log-format", "json", "--resolve-names", "--check-config")
    assert (status, out, errors) == (0, "config ok\n", [])


BAD = {
    "tls cert without key": (["--tls-cert", "{cert}"], "--tls-cert and --tls-key"),
    "tls key without cert": (["--tls-key", "{key}"], "--tls-cert and --tls-key"),
    "tls missing file": (["--tls-cert", "{dir}/none.pem", "--tls-key", "{key}"],
                         "cannot read TLS certificate"),
    "tls junk": (["--tls-cert", "{junk}", "--tls-key", "{key}"], "cannot load TLS"),
    "tls key is a directory": (["--tls-cert", "{cert}", "--tls-key", "{dir}"],
                               "cannot read TLS key"),
    "handshake timeout 0": (["--tls-handshake-timeout", "0"], "must be above 0"),
    "metrics unix": (["--metrics", "unix:/tmp/m.sock"], "--metrics needs a TCP"),
    "metrics junk": (["--metrics", "host:"], "--metrics: bad endpoint 'host:': empty port"),
    "metrics port range": (["--metrics", "99999"], "port out of range"),
    "max per ip 0": (["--max-per-ip", "0"], "must be above 0"),
    "max per ip text": (["--max-per-ip", "many"], "not a number"),
    "rate junk": (["--rate-per-ip", "fast"], "not a rate"),
    "rate zero": (["--rate-per-ip", "0/s"], "rate must be above 0"),
    "rate per hour": (["--rate-per-ip", "5/h"], "not a rate"),
    "inetd two services": (["--inetd", "reverse", "factor"], "--inetd serves one service"),
    "inetd listen": (["--inetd", "--listen", "7800"], "--listen does not apply"),
    "inetd metrics": (["--inetd", "--metrics", "9100"], "--metrics does not apply"),
    "inetd per ip": (["--inetd", "--max-per-ip", "3"], "--max-per-ip does not apply"),
    "inetd rate": (["--inetd", "--rate-per-ip", "3/s"], "--rate-per-ip does not apply"),
    "log format": (["--log-format", "xml"], "invalid choice"),
    "log level": (["--log-level", "loud"], "invalid choice"),
    "unknown service": (["--listen", "nosuch=7800"], "not being served"),
    "bad endpoint": (["--listen", "[::1"], "bad IPv6 endpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_exit_2_with_one_line(pem, case: str) -> None:
    args, expected = BAD[case]
    services = [] if "reverse" in args else ["reverse"]
    status, errors, out = serve(*services, *[a.format(**pem) for a in args], "--check-config")
    assert status == 2, (errors, out)
    assert out == ""
    text = "\n".join(errors)
    assert "Traceback" not in text
    assert errors[-1].startswith("tcpkit serve: error: ") and expected in errors[-1], errors
    # One error line; argparse's own errors are preceded by the usage summary.
    assert [e for e in errors if "error:" in e] == [errors[-1]]


@pytest.mark.parametrize("listen", ["nonsense:port:x", "-1"])
def test_serve_listen_errors_name_the_problem(listen: str) -> None:
    status, (line, *more), _ = serve("reverse", "--listen", listen, "--check-config")
    assert status == 2 and not more
    assert line.startswith(f"tcpkit serve: error: bad endpoint {listen!r}: ")
    assert line.endswith("(accepted: PORT, HOST:PORT, [IPV6]:PORT, HOST:SERVICENAME or "
                         "unix:/path)")
    assert "need brackets" not in line and "try -1" not in line


def test_naming_one_services_endpoint_serves_that_service_only() -> None:
    server = start_server([*script("tcpkit"), "serve", "--listen", "reverse=127.0.0.1:0"])
    assert server.stop() == 0  # every listener is open before the first is logged
    assert list(server.ports) == ["reverse"]
    assert server.stderr().count("Listening on") == 1, server.stderr()
    shown = " ".join(run([*script("tcpkit"), "serve", "--help"]).stdout.decode().split())
    assert "or those named in --listen SERVICE=ENDPOINT" in shown


@pytest.mark.parametrize("command", ["services", "serve"])
def test_an_unknown_service_is_a_usage_error_everywhere(command: str) -> None:
    done = run([*script("tcpkit"), command, "no-such-service"])
    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith(f"tcpkit {command}: error: unknown ")
    assert "no-such-service" in line


def test_check_config_does_not_bind(pem) -> None:
    # The same port twice would fail to serve, but checking never opens a socket.
    status, _, out = serve("reverse", "--listen", "127.0.0.1:1", "--check-config")
    assert (status, out) == (0, "config ok\n")


@pytest.mark.parametrize("fds, expected", [
    ("1", "inherited fd 3 is not a socket"),
    ("abc", "LISTEN_FDS is not a number: 'abc'"),
])
def test_broken_socket_activation_is_one_line(fds: str, expected: str) -> None:
    import os
    import subprocess

    env = {**os.environ, "LISTEN_FDS": fds}
    env.pop("LISTEN_PID", None)
    done = subprocess.run([*script("tcpkit"), "serve", "reverse"], env=env,
                          capture_output=True, timeout=30)
    assert done.returncode == 2
    errors = done.stderr.decode().splitlines()
    assert len(errors) == 1 and errors[0].startswith("tcpkit serve: error: ")
    assert expected in errors[0]
