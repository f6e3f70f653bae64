"""Throw-away certificate authorities for the TLS tests (trustme), made once per module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


class Certificates:
    """Two CAs, "one" and "two", each with a server certificate for 127.0.0.1 and
    localhost; :meth:`install` puts one pair where the server reads it, so a test
    can swap certificates under a running server (SIGHUP reload)."""

    def __init__(self, where: Path) -> None:
        trustme = pytest.importorskip("trustme")
        self.where = where
        for name in ("one", "two"):
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            ca.cert_pem.write_to_path(str(where / f"{name}-ca.pem"))
            cert.private_key_pem.write_to_path(str(where / f"{name}-key.pem"))
            cert.cert_chain_pems[0].write_to_path(str(where / f"{name}-cert.pem"))

    def path(self, name: str) -> str:
        return str(self.where / name)

    def install(self, name: str) -> tuple[str, str]:
        """Copy pair ``name`` to server.pem/server-key.pem (what the server is given)."""
        shutil.copy(self.path(f"{name}-cert.pem"), self.where / "server.pem")
        shutil.copy(self.path(f"{name}-key.pem"), self.where / "server-key.pem")
        return self.path("server.pem"), self.path("server-key.pem")

    def args(self, name: str = "one") -> list[str]:
        """``--tls-cert``/``--tls-key`` for ``tcpkit serve``, with pair ``name`` installed."""
        cert, key = self.install(name)
        return ["--tls-cert", cert, "--tls-key", key]
