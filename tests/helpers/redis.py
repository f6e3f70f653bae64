"""A throw-away redis-server on loopback for the pub/sub tests, stopped by PID."""

from __future__ import annotations

import subprocess
import threading

from helpers.net import free_ports


class RedisServer:
    """A throw-away redis-server on loopback, stopped by PID."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        for line in self.process.stdout:  # wait for the event, not for time
            if b"Ready to accept connections" in line:
                break
        else:
            raise AssertionError("redis-server did not start")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
