"""The public API (issue 10, part 5): ``tcpkit.__all__``, one ``tcpkit.Error``,
``tcpkit.serve``/``serve_async``, ``tcpkit serve package.module:SERVICE`` and
``tcpkit.testing`` in every mode and without pytest.

Servers are real processes (or the real serving modes in a thread, through
``tcpkit.testing``) on real loopback sockets.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpkit
from helpers.net import exchange
from helpers.servers import script, start_server
from tcpkit import AsyncLineClient, ConnectError, INETSocket, RequestError, Service
from tcpkit.serving.config import Limits
from tcpkit.serving.observe.events import Observer
from tcpkit.testing import running

MODES = ["async", "thread", "fork", "iterative"]

PUBLIC = [
    "AsyncFactorClient", "AsyncLineClient", "AsyncReverseClient", "Blocking", "ConnectError",
    "ConnectionClosed", "Error", "FactorClient", "INETSocket", "LineClient", "ListenError",
    "Offload", "Options", "Peer", "RequestError", "ReverseClient", "ServerError", "Service",
    "Session", "__version__", "factorize", "serve", "serve_async",
]


def shout(line: bytes) -> bytes:
    if not line:
        raise RequestError("nothing to shout")
    return line.upper()


SHOUT = Service("shout", 7802, "upper-cases each line", shout)

# A program that serves from Python, as a user writes it; argv: mode workers.
APP = textwrap.dedent('''
    import sys
    import tcpkit

    def shout(line):
        if not line:
            raise tcpkit.RequestError("nothing to shout")
        return line.upper()

    SHOUT = tcpkit.Service("shout", 7802, "upper-cases each line", shout)
    ECHO = tcpkit.Service("echo2", 7803, "says ok", lambda line: b"ok " + line)

    if __name__ == "__main__":
        mode, workers = sys.argv[1], int(sys.argv[2])
        if mode == "several":
            tcpkit.serve([SHOUT, ECHO], listen={"shout": "127.0.0.1:0",
                                                "echo2": ["127.0.0.1:0"]})
        elif mode == "async-api":
            import asyncio
            asyncio.run(tcpkit.serve_async(SHOUT, listen="127.0.0.1:0", max_line=8))
        else:
            tcpkit.serve(SHOUT, listen="127.0.0.1:0", mode=mode, workers=workers, max_line=8)
''')

SHOUTED = b"HI\nerror: nothing to shout\nerror: line too long (max 8 bytes)\n"


# -- the names -----------------------------------------------------------------------


def test_all_is_pinned_and_every_name_imports() -> None:
    assert sorted(tcpkit.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(tcpkit, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from tcpkit import *", namespace)  # what a star import gives
    assert set(PUBLIC) <= set(namespace)


# -- one Error base ---------------------------------------------------------------------

ERRORS = [  # (module, class, what it subclassed before tcpkit.Error existed)
    ("tcpkit.sockets", "ConnectError", OSError),
    ("tcpkit.client", "ConnectionClosed", ConnectionError),
    ("tcpkit.client", "ServerError", Exception),
    ("tcpkit.service", "RequestError", Exception),
    ("tcpkit.endpoints", "EndpointError", ValueError),
    ("tcpkit.serving.listeners", "ListenError", Exception),
    ("tcpkit.tlsclient", "TLSSetupError", ValueError),
    ("tcpkit.serving.guards.tls", "TLSError", Exception),
    ("tcpkit.serving.guards.activation", "ActivationError", Exception),
    ("tcpkit.serving.modes.inetd", "InetdError", Exception),
    ("tcpkit.operate", "OptionError", Exception),
    ("tcpkit.registry", "UnknownService", LookupError),
    ("tcpkit.registry", "ServiceSpecError", LookupError),
    ("tcpkit.serving.offload.jobs", "TimeLimitExceeded", Exception),
    ("tcpkit.serving.offload.jobs", "WorkerCrashed", Exception),
    ("tcpkit.serving.offload.dask", "DaskUnavailable", Exception),
    ("tcpkit.hub", "HubUnavailable", ConnectionError),
    ("tcpkit.serving.guards.proxy", "ProxyHeaderError", ValueError),
    ("tcpkit.serving.guards.pidfile", "PidFileError", Exception),
    ("tcpkit.serving.guards.privileges", "PrivilegeError", Exception),
    ("tcpkit.config_file", "ConfigError", Exception),
]


@pytest.mark.parametrize(("module", "name", "before"), ERRORS,
                         ids=[name for _, name, _ in ERRORS])
def test_every_error_derives_from_tcpkit_error_and_its_old_base(
        module: str, name: str, before: type[Exception]) -> None:
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, tcpkit.Error) and issubclass(error, before)


def test_every_exception_class_in_src_is_listed() -> None:
    """A new exception class must join ERRORS (and so derive from tcpkit.Error)."""
    src = Path(tcpkit.__file__).parent
    listed = {name for _, name, _ in ERRORS} | {"Error", "UsageError"}
    found = set()
    for path in src.rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith("class ") and ("Error" in line or "Exception" in line):
                found.add(line.split()[1].split("(")[0])
    assert found - listed == set()


def test_a_refused_connection_is_caught_as_tcpkit_error_and_oserror() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(tcpkit.Error, match="Connection refused") as caught:
            tcpkit.LineClient(f"127.0.0.1:{port}", timeout=5)
        assert isinstance(caught.value, OSError)
        with pytest.raises(tcpkit.ConnectError, match="Connection refused"):
            asyncio.run(AsyncLineClient.connect(f"127.0.0.1:{port}", timeout=5))


# -- tcpkit.serve from Python ------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_serve_from_python_in_every_mode(app: Path, mode: str) -> None:
    server = start_server([sys.executable, str(app), mode, "1"])
    try:
        assert f"(shout, mode={mode})" in server.stderr()
        assert exchange(server.port, b"hi\n\n" + b"x" * 20 + b"\n") == SHOUTED
    finally:
        assert server.stop(signal.SIGINT) == 0
    assert "stopped after" in server.stderr()
    assert "Traceback" not in server.stderr()


def test_serve_with_workers(app: Path) -> None:
    server = start_server([sys.executable, str(app), "thread", "2"])
    try:
        for _ in range(4):
            assert exchange(server.port, b"hi\n\n" + b"x" * 20 + b"\n") == SHOUTED
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def test_serve_several_services_by_name(app: Path) -> None:
    server = start_server([sys.executable, str(app), "several", "1"], services=2)
    try:
        assert exchange(server.ports["shout"], b"a\n") == b"A\n"
        assert exchange(server.ports["echo2"], b"a\n") == b"ok a\n"
    finally:
        assert server.stop() == 0


def test_serve_async_stops_on_sigterm(app: Path) -> None:
    server = start_server([sys.executable, str(app), "async-api", "1"])
    try:
        assert exchange(server.port, b"hi\n\n" + b"x" * 20 + b"\n") == SHOUTED
    finally:
        assert server.stop() == 0
    assert "stopped after" in server.stderr()
    assert "Traceback" not in server.stderr()


class Listening(logging.Handler):
    """Catches the ``Listening on`` record of a server in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[str] = []
        self.ready = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "listening":
            self.addresses.append(str(getattr(record, "address", "")))
            self.ready.set()


@pytest.fixture
def listening() -> Iterator[Listening]:
    handler = Listening()
    logger = logging.getLogger("tcpkit")
    level = logger.level
    logger.setLevel(logging.INFO)  # "Listening on" is an info record
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_serve_async_is_cancelled_like_a_signal(listening: Listening) -> None:
    async def main() -> str:
        task = asyncio.create_task(tcpkit.serve_async(SHOUT, listen="127.0.0.1:0"))
        assert await asyncio.to_thread(listening.ready.wait, 10)
        address = listening.addresses[0]
        async with AsyncLineClient(address) as client:
            assert await client.request(b"hi") == b"HI"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)  # drained: the open client is closed
            with pytest.raises(tcpkit.ConnectionClosed):
                await client.request(b"gone")
        return address

    address = asyncio.run(main())
    with pytest.raises(ConnectError):  # the listener closed with the server
        INETSocket.connect(address, timeout=5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handed back


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"max_lines": 5}, TypeError, "unknown setting 'max_lines'"),
    ({"max_line": 0}, ValueError, "max_line must be above 0"),
    ({"max_line": "big"}, TypeError, "max_line must be a whole number"),
    ({"idle_timeout": True}, TypeError, "idle_timeout must be a number"),
    ({"max_connections": None}, ValueError, "max_connections cannot be None"),
    ({"max_digits": 2.5}, TypeError, "max_digits must be a whole number"),
    ({"executor": "ftp://x"}, ValueError, "--executor must be"),
    ({"mode": "forking"}, ValueError, "unknown mode 'forking'"),
    ({"workers": 0}, ValueError, "workers must be"),
    ({"listen": "127.0.0.1:nosuchport"}, tcpkit.Error, "unknown port or service name"),
    ({"listen": 3.5}, TypeError, "not an endpoint"),
    ({"listen": {"nosuch": 0}}, ValueError, "'nosuch', which is not being served"),
    ({"tls_cert": "cert.pem"}, ValueError, "given together"),
])
def test_bad_arguments_fail_before_serving(kwargs: dict[str, object], error: type[Exception],
                                           message: str) -> None:
    with pytest.raises(error, match=message):
        tcpkit.serve(SHOUT, **kwargs)  # type: ignore[arg-type]


def test_bad_services_are_refused() -> None:
    with pytest.raises(TypeError, match=r"not a tcpkit\.Service"):
        tcpkit.serve([SHOUT, shout])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="share a name"):
        tcpkit.serve([SHOUT, SHOUT])
    with pytest.raises(ValueError, match="several services"):
        tcpkit.serve([SHOUT, Service("other", 1, "", shout)], listen="127.0.0.1:0")


def test_a_port_in_use_is_a_listen_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(tcpkit.ListenError, match="Address already in use"):
            tcpkit.serve(SHOUT, listen=f"127.0.0.1:{port}")


def test_serve_refuses_a_thread_that_cannot_get_signals() -> None:
    raised: list[BaseException] = []

    def call() -> None:
        try:
            tcpkit.serve(SHOUT, listen="127.0.0.1:0")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(10)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)
    assert "serve_async" in str(raised[0])


# -- tcpkit serve package.module:SERVICE ---------------------------------------------------

MODULE = textwrap.dedent('''
    from tcpkit import Service

    SERVICE = Service("spec-shout", 7899, "shouts", lambda line: line.upper())
    NUMBER = 42

    class Holder:
        SERVICE = SERVICE
''')


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with a service module and a package, neither installed."""
    (tmp_path / "myshout.py").write_text(MODULE)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "svc.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    return tmp_path


@pytest.mark.parametrize(("spec", "mode"), [
    ("myshout:SERVICE", "async"), ("pkg.svc:SERVICE", "fork"), ("myshout:Holder.SERVICE", "thread"),
])
def test_serve_a_module_from_the_current_directory(project: Path, spec: str, mode: str) -> None:
    command = " ".join([*script("tcpkit"), "serve", spec, "--mode", mode,
                        "--listen", "127.0.0.1:0"])
    server = start_server(["sh", "-c", f"cd {project} && exec {command}"])
    try:
        assert f"(spec-shout, mode={mode})" in server.stderr()
        assert exchange(server.port, b"hello\r\nworld\n") == b"HELLO\r\nWORLD\n"
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize(("spec", "message"), [
    ("myshout:NOPE", "'myshout' has no attribute 'NOPE'"),
    ("myshout:NUMBER", "myshout:NUMBER is not a tcpkit.Service (it is int)"),
    ("nosuchmodule:SERVICE", "No module named 'nosuchmodule'"),
    ("broken:SERVICE", "cannot import 'broken' for 'broken:SERVICE': RuntimeError: broken"),
    ("myshout:", "bad service 'myshout:'"),
    (":SERVICE", "bad service ':SERVICE'"),
    ("my shout:SERVICE", "bad service 'my shout:SERVICE'"),
])
def test_a_bad_module_spec_is_a_usage_error(project: Path, spec: str, message: str) -> None:
    done = subprocess.run([*script("tcpkit"), "serve", spec, "--listen", "127.0.0.1:0"],
                          cwd=project, capture_output=True, timeout=60, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert message in stderr and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr


# -- tcpkit.testing --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_running_in_every_mode(mode: str) -> None:
    with running(SHOUT, Limits(max_line=8), mode=mode) as server:
        assert server.mode == mode
        assert (server.pid != os.getpid()) == (mode == "fork")
        assert exchange(server.port, b"hi\n\n" + b"x" * 20 + b"\n") == SHOUTED
        with INETSocket.connect(server.endpoint, timeout=10) as one, \
                INETSocket.connect(server.endpoint, timeout=10) as two:
            one.print("first")
            assert one.readline() == b"FIRST\n"
            one.close()  # iterative mode serves the next client only after this one
            two.print("second")
            assert two.readline() == b"SECOND\n"
    with pytest.raises(ConnectError):
        INETSocket.connect(server.endpoint, timeout=5)
    if mode == "fork":
        with pytest.raises(ProcessLookupError):  # stopped and reaped
            os.kill(server.pid, 0)


class Closes(Observer):
    def __init__(self) -> None:
        self.closed_event = threading.Event()

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        self.closed_event.set()


def test_a_fork_mode_server_does_not_hold_the_tests_other_sockets() -> None:
    """A client closed by the test is closed for its server, fork server or not."""
    observer = Closes()
    with running(SHOUT, observer=observer) as other:
        client = INETSocket.connect(other.endpoint, timeout=10)
        client.print("x")
        assert client.readline() == b"X\n"
        with running(SHOUT, mode="fork") as forked:  # forked while the client is open
            client.close()
            assert observer.closed_event.wait(10), "the fork server kept the client open"
            assert exchange(forked.port, b"y\n") == b"Y\n"


def test_tcpkit_server_fixture_takes_a_mode(tcpkit_server: object) -> None:
    server = tcpkit_server(SHOUT, mode="thread")  # type: ignore[operator]
    assert server.mode == "thread"
    assert exchange(server.port, b"fixture\n") == b"FIXTURE\n"


NO_PYTEST = textwrap.dedent('''
    import sys
    sys.modules["pytest"] = None  # "import pytest" now fails as if it were not installed
    import tcpkit.testing
    from tcpkit import INETSocket, Service

    assert not hasattr(tcpkit.testing, "tcpkit_server")
    SERVICE = Service("shout", 7802, "", lambda line: line.upper())
    for mode in ("async", "thread", "fork", "iterative"):
        with tcpkit.testing.running(SERVICE, mode=mode) as server:
            with INETSocket.connect(server.endpoint, timeout=10) as sock:
                sock.print(mode)
                print(sock.readline().decode(), end="")
''')


def test_testing_works_without_pytest() -> None:
    done = subprocess.run([sys.executable, "-c", NO_PYTEST], capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"ASYNC\nTHREAD\nFORK\nITERATIVE\n"
    assert hasattr(importlib.import_module("tcpkit.testing"), "tcpkit_server")  # with pytest
