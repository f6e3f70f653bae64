"""HAProxy run for real on one of contrib/haproxy's files: its example addresses
swapped for the test's loopback ports, then started, stopped and its output read."""

from __future__ import annotations

import subprocess
from pathlib import Path

CONTRIB = Path(__file__).resolve().parent.parent.parent / "contrib" / "haproxy"


def localized(name: str, backends: dict[int, int], fronts: dict[int, int],
              check_ports: dict[int, int] | None = None, fast_checks: bool = False) -> str:
    """contrib/haproxy/NAME with the test's ports: ``backends`` {example port: real}
    (``127.0.0.1:PORT``), ``fronts`` (``bind :PORT``), ``check_ports`` (a health check's
    ``port PORT``).  No ``log global`` (no syslog here); ``fast_checks``: a health check
    every 200 ms instead of 2 s, so a server is found up (or down) sooner."""
    text = (CONTRIB / name).read_text()
    for example, real in backends.items():
        text = text.replace(f"127.0.0.1:{example}", f"127.0.0.1:{real}")
    for example, real in fronts.items():
        text = text.replace(f"bind :{example}", f"bind 127.0.0.1:{real}")
    for example, real in (check_ports or {}).items():
        text = text.replace(f" port {example}", f" port {real}")
    text = text.replace("    log global\n", "")
    if fast_checks:
        text = text.replace("inter 2s", "inter 200ms")
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    addresses = sum(line.count("127.0.0.1:") for line in settings)
    assert addresses == len(backends) + len(fronts), "an example address is left"
    return text


def start_haproxy(config: str, where: Path) -> subprocess.Popen[bytes]:
    """``haproxy -db`` (in the foreground, no daemon) on ``config``, written into ``where``."""
    path = where / f"haproxy-{len(list(where.glob('haproxy-*.cfg')))}.cfg"
    path.write_text(config)
    return subprocess.Popen(["haproxy", "-db", "-f", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop_haproxy(proxy: subprocess.Popen[bytes]) -> str:
    """Stop it (SIGTERM, by its PID) and return what it logged."""
    proxy.terminate()
    output, _ = proxy.communicate(timeout=15)
    return output.decode("utf-8", "replace")
