"""Coverage-guided fuzzing (atheris): the seed corpus as a test, and a brief run of each.

``python fuzz/run.py --minutes N`` is the long form; here every harness replays
its checked-in corpus (no atheris needed) and, where atheris is installed, fuzzes
for a few seconds.  Crashes the fuzzers found are pinned below.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tcpkit.endpoints import EndpointError, parse_endpoint

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def test_every_harness_has_a_seed_corpus() -> None:
    assert set(HARNESSES) == {"endpoint", "factor", "framing", "proxy", "reverse"}
    for name in HARNESSES:
        assert list((FUZZ / "corpus" / name).iterdir()), name


@pytest.mark.parametrize("name", HARNESSES)
def test_seed_corpus_replays_clean(name: str) -> None:
    check = importlib.import_module(f"fuzz_{name}").check
    for seed in sorted((FUZZ / "corpus" / name).iterdir()):
        check(seed.read_bytes())


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzzer_finds_nothing_in_a_few_seconds(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run([sys.executable, str(FUZZ / "run.py"), "--seconds", "2", name],
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith(name)


@pytest.mark.parametrize("text", [
    "[::1\x00]:fa\x00\x00\x00\x00cto",  # NUL in a service name: ValueError escaped
    "host:\u0661\u0662",  # Arabic-Indic digits were read as port 12
    "\u00b2",  # superscript two: isdigit() but int() fails
])
def test_endpoint_parser_refuses_what_the_fuzzer_found(text: str) -> None:
    with pytest.raises(EndpointError):
        parse_endpoint(text)
