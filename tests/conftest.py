"""The fixtures pytest must see; every helper they use lives in ``tests/helpers/``.

Tests import helpers from the ``helpers`` package (``from helpers.net import
exchange``), never from conftest.py or from another test module.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from helpers.redis import RedisServer
from helpers.servers import Servers
from helpers.tls import Certificates


def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port``, asked of the kernel (/proc/net/tcp*)
    rather than by connecting: a probe would be a client the server sees."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def start_on_port(args: list[str], port: int, timeout: float = 20.0) -> Server:
    """Start a server that is told its port (one that logs no ``Listening on`` line,
    e.g. a benchmark anchor) and wait until it listens there."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server(process, ports={"": port})

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            server.stderr_lines.append(raw.decode("utf-8", "replace"))

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if listening(port):
            return server
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server did not listen on port {port}: {args}\n{server.stderr()}")


@pytest.fixture
def serve() -> Iterator[Servers]:
    """Start ``tcpkit serve ARGS...`` on loopback port 0; stopped after the test."""
    servers = Servers()
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Two throw-away CAs with a server certificate each (skips without trustme)."""
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throw-away redis-server on 127.0.0.1 (skips where redis-server is missing)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
