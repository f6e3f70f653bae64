"""What every harness shares: optional atheris, and one way to run a check.

A harness is a module with ``check(data: bytes) -> None`` that raises only when
it finds a bug.  Run as a script, it hands ``check`` to atheris (libFuzzer,
coverage-guided); imported, its ``check`` replays the seed corpus as a plain
test (``tests/test_reliability_fuzz.py``) with or without atheris installed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

try:
    import atheris
except ImportError:  # the corpus replay still works without it
    atheris = None


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Import the code under test with coverage instrumentation, when fuzzing."""
    if atheris is None:
        yield
        return
    with atheris.instrument_imports(include=["tcpkit"]):
        yield


def fuzz_main(check: Callable[[bytes], None]) -> None:
    """Run ``check`` under libFuzzer with this process's command line."""
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
