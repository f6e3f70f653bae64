"""On a real host: ``--user``/``--group`` (bind as root, serve as a plain user) and
``--pid-file``, with real server processes and a real non-root user.

The privilege tests need root (to bind a port below 1024 and to switch user)
and an interpreter the plain user can run (see ``as_user``); without either
they skip, saying so.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.net import connect, exchange, recv_lines
from helpers.processes import descendants
from helpers.servers import run, script, start_server

TEST_USER = "tcpkit-test"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")


DROP_PYTHON = "TCPKIT_TEST_DROP_PYTHON"  # an interpreter with tcpkit that the user can run
ServeAs = Callable[..., list[str]]  # the command line of `tcpkit serve ARGS`


@pytest.fixture(scope="module")
def test_user() -> pwd.struct_passwd:
    """The plain user the servers become (created, as a system user, if absent)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", TEST_USER], check=True,
                       capture_output=True, timeout=60)
        return pwd.getpwnam(TEST_USER)


@pytest.fixture(scope="module")
def as_user(test_user: pwd.struct_passwd) -> ServeAs:
    """``tcpkit serve ARGS`` under an interpreter the plain user can run.

    After the drop the server still starts Python processes (its factor pool's
    forkserver) and imports modules, so the user must be able to read the
    interpreter and the package.  This one may live under a 0700 /root (pyenv
    as root); then ``$TCPKIT_TEST_DROP_PYTHON`` names one that can (.ci/run makes
    one from Debian's python3), as a real host's /usr/bin/python3 would be.
    """
    problems = []
    for python in (sys.executable, os.environ.get(DROP_PYTHON)):
        if not python:
            continue
        problem = _cannot_run(python, test_user)
        if not problem:
            return lambda *args: [python, "-m", "tcpkit", "serve", *args]
        problems.append(f"{python}: {problem}")
    pytest.skip(f"{TEST_USER} cannot run tcpkit under any interpreter (set ${DROP_PYTHON}): "
                + "; ".join(problems))


def _cannot_run(python: str, user: pwd.struct_passwd) -> str:
    """Why ``user`` cannot import tcpkit with ``python`` ("" if it can)."""
    try:
        probe = subprocess.run([python, "-c", "import tcpkit.cli, uvloop"], capture_output=True,
                               timeout=60, check=False, user=user.pw_uid, group=user.pw_gid,
                               extra_groups=[], cwd="/")
    except OSError as exc:  # e.g. the interpreter lives under a 0700 /root
        return str(exc)
    return probe.stderr.decode()[-200:] if probe.returncode else ""


def privileged_port() -> int:
    """A free port below 1024: only root may bind it."""
    for port in range(1023, 600, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


def credentials(pid: int) -> tuple[set[int], set[int], list[int]]:
    """(real/effective/saved/fs uids, the same gids, supplementary groups) of a process."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ({int(v) for v in fields["Uid"].split()}, {int(v) for v in fields["Gid"].split()},
            [int(v) for v in fields["Groups"].split()])


def serve_command(*args: str) -> list[str]:
    return [*script("tcpkit"), "serve", *args]


@needs_root
@pytest.mark.parametrize(("mode", "workers"), [("async", 1), ("thread", 1), ("fork", 1),
                                               ("iterative", 1), ("async", 2), ("fork", 2)])
def test_binds_as_root_then_serves_as_the_user(test_user: pwd.struct_passwd, as_user: ServeAs,
                                               mode: str, workers: int) -> None:
    port = privileged_port()
    server = start_server(as_user(
        "reverse", "factor", "--listen", f"reverse=127.0.0.1:{port}",
        "--listen", "factor=127.0.0.1:0", "--mode", mode, "--workers", str(workers),
        "--user", TEST_USER, "--factor-workers", "1"), services=2)
    try:
        assert server.ports["reverse"] == port  # bound below 1024: as root
        server.wait_for_stderr(rf"running as user {TEST_USER}, group \S+")
        # A big number goes to the factor pool: its workers are among the processes checked.
        big = b"%d\n" % ((2**61 - 1) * (2**31 - 1))
        with connect(server.ports["factor"]) as factor_client:
            factor_client.sendall(big)
            assert recv_lines(factor_client, 1) == [b"2147483647 2305843009213693951\n"]
        with connect(port) as client:  # fork mode: this client's child is alive now
            client.sendall(b"root\n")
            assert recv_lines(client, 1) == [b"toor\n"]
            tree = [server.pid, *descendants(server.pid)]
            assert len(tree) >= 1 + (workers if workers > 1 else 0) + (mode == "fork")
            for pid in tree:
                try:
                    uids, gids, groups = credentials(pid)
                except OSError:
                    continue  # gone meanwhile
                assert uids == {test_user.pw_uid}, (pid, uids)
                assert gids == {test_user.pw_gid}, (pid, gids)
                assert groups == [], (pid, groups)
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


@needs_root
def test_group_option_and_a_root_only_key(test_user: pwd.struct_passwd, as_user: ServeAs,
                                          tmp_path: Path) -> None:
    """--group picks the group; a TLS key only root can read is read before the drop."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    key, chain = tmp_path / "key.pem", tmp_path / "chain.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    key.chmod(0o600)  # root's alone
    group = grp.getgrgid(0).gr_name  # any group other than the user's own
    server = start_server(as_user(
        "reverse", "--listen", "127.0.0.1:0", "--tls-cert", str(chain), "--tls-key", str(key),
        "--user", TEST_USER, "--group", group))
    try:
        server.wait_for_stderr(rf"running as user {TEST_USER}, group {group}")
        context = ssl.create_default_context()
        authority.configure_trust(context)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"secret\n")
            assert tls.recv(100) == b"terces\n"
        assert credentials(server.pid)[1] == {0}
    finally:
        assert server.stop() == 0


@needs_root
def test_not_root_or_no_such_user_is_a_usage_error(test_user: pwd.struct_passwd,
                                                   as_user: ServeAs) -> None:
    missing = run(as_user("reverse", "--listen", "127.0.0.1:0", "--user", "no-such-user-here"))
    assert missing.returncode == 2
    assert b"--user no-such-user-here: no such user" in missing.stderr
    no_group = run(as_user("reverse", "--group", "no-such-group-here"))
    assert no_group.returncode == 2 and b"no such group" in no_group.stderr
    # Started as the plain user itself: it cannot switch to anyone.
    plain = subprocess.run(as_user("reverse", "--listen", "127.0.0.1:0", "--user", TEST_USER),
                           capture_output=True, timeout=60, check=False,
                           user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[],
                           cwd="/")
    assert plain.returncode == 2, plain.stderr
    assert b"--user tcpkit-test needs root to switch to" in plain.stderr
    assert b"Traceback" not in plain.stderr


# -- the pid file -----------------------------------------------------------------------


def test_pid_file_written_after_binding_and_removed_at_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "tcpkit.pid"
    server = start_server(serve_command("reverse", "--listen", "127.0.0.1:0",
                                        "--pid-file", str(pid_file)))
    assert pid_file.read_text() == f"{server.pid}\n"
    assert exchange(server.port, b"abc\n") == b"cba\n"
    assert server.stop() == 0
    assert not pid_file.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_live_pid_file_is_refused(tmp_path: Path, workers: int) -> None:
    pid_file = tmp_path / "tcpkit.pid"
    first = start_server(serve_command("reverse", "--listen", "127.0.0.1:0",
                                       "--workers", str(workers), "--pid-file", str(pid_file)))
    try:
        second = run(serve_command("reverse", "--listen", "127.0.0.1:0",
                                   "--pid-file", str(pid_file)))
        assert second.returncode == 1
        assert second.stderr.decode().strip().splitlines()[-1] == (
            f"error: pid file {pid_file} is held by a running server (PID {first.pid})")
        assert pid_file.read_text() == f"{first.pid}\n"  # untouched
        assert exchange(first.port, b"still\n") == b"llits\n"
    finally:
        assert first.stop() == 0
    assert not pid_file.exists()


def test_a_file_naming_a_live_process_is_refused(tmp_path: Path) -> None:
    """Not locked (written by anything), but its PID is alive: refused all the same."""
    pid_file = tmp_path / "other.pid"
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        result = run(serve_command("reverse", "--listen", "127.0.0.1:0",
                                   "--pid-file", str(pid_file)))
        assert result.returncode == 1
        assert f"names a running process (PID {other.pid})".encode() in result.stderr
    finally:
        other.kill()
        other.wait()


def test_a_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its PID names no process now
    pid_file = tmp_path / "tcpkit.pid"
    pid_file.write_text(f"{dead.pid}\n")
    server = start_server(serve_command("reverse", "--listen", "127.0.0.1:0",
                                        "--pid-file", str(pid_file)))
    try:
        assert pid_file.read_text() == f"{server.pid}\n"
        server.wait_for_stderr(rf"replacing stale pid file .* \(PID {dead.pid} is gone\)")
    finally:
        assert server.stop() == 0
    assert not pid_file.exists()


def test_what_is_not_a_pid_file_is_never_overwritten(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = run(serve_command("reverse", "--listen", "127.0.0.1:0",
                               "--pid-file", str(precious)))
    assert result.returncode == 1
    assert b"exists and is not a pid file; not overwriting it" in result.stderr
    assert precious.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


def test_no_pid_file_when_the_port_is_taken(tmp_path: Path) -> None:
    pid_file = tmp_path / "tcpkit.pid"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run(serve_command("reverse", "--listen",
                                   f"127.0.0.1:{taken.getsockname()[1]}",
                                   "--pid-file", str(pid_file)))
    assert result.returncode == 1 and b"Address already in use" in result.stderr
    assert not pid_file.exists()


@needs_root
def test_pid_file_in_the_users_directory_is_removed_after_the_drop(
        test_user: pwd.struct_passwd, as_user: ServeAs) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="tcpkit-run-", dir="/tmp"))
    try:
        os.chown(run_dir, test_user.pw_uid, test_user.pw_gid)  # as systemd's RuntimeDirectory=
        pid_file = run_dir / "tcpkit.pid"
        server = start_server(as_user("reverse", "--listen", "127.0.0.1:0",
                                      "--pid-file", str(pid_file), "--user", TEST_USER,
                                      "--mode", "thread"))
        assert pid_file.read_text() == f"{server.pid}\n"
        assert server.stop(signal.SIGINT) == 0
        assert not pid_file.exists()
        assert "will stay after exit" not in server.stderr()
    finally:
        shutil.rmtree(run_dir)


@needs_root
def test_a_pid_file_the_user_cannot_remove_is_said_at_start(
        test_user: pwd.struct_passwd, as_user: ServeAs, tmp_path: Path) -> None:
    """In root's directory the plain user cannot remove it: said at start, replaced later."""
    pid_file = tmp_path / "tcpkit.pid"
    command = as_user("reverse", "--listen", "127.0.0.1:0", "--pid-file", str(pid_file),
                      "--user", TEST_USER)
    server = start_server(command)
    server.wait_for_stderr(rf"pid file {pid_file} will stay after exit: its directory is not "
                           rf"writable by this user")
    assert server.stop() == 0
    assert pid_file.read_text() == f"{server.pid}\n"  # left, its PID now dead
    again = start_server(command)
    try:
        assert pid_file.read_text() == f"{again.pid}\n"
    finally:
        assert again.stop() == 0
