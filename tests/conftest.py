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
