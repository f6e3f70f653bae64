"""The factoring engine and the factor service's answers, without a socket."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import flint
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpkit import factorize
from tcpkit.factoring import engine
from tcpkit.factoring.bands import INLINE_BELOW, PARI_FROM
from tcpkit.service import Offload, Options, RequestError
from tcpkit.services.factor import SERVICE, answer_block, factor_digits, make_answer

M61 = 2**61 - 1
M89 = 2**89 - 1
P30A, P30B = 100000000000000000000000000319, 100000000000000000000000000379  # primes
P15, P17 = 100000000000031, 10000000000000061  # primes: P15 * P17 is a 32-digit semiprime


def check(n: int, factors: list[int]) -> None:
    """``factors`` is n's factorization: product, primality, order."""
    sign = -1 if n < 0 else 1
    assert math.prod(factors) == n
    body = factors[1:] if sign < 0 else factors
    if sign < 0:
        assert factors[0] == -1
    assert body == sorted(body)
    assert all(flint.fmpz(p).is_probable_prime() for p in body)


CASES = [
    1, 2, 3, 4, 42, 1024, 2**63 - 25, 2**64 - 59, INLINE_BELOW - 1, INLINE_BELOW,
    INLINE_BELOW + 1, 2**128 + 10, M61**3 * 2**10, M89**2 * 3, P15 * P17,
    P30A**2, M89**2 * 12345678910111213**2,
    math.prod(range(1, 40)) * M89, 2**521 - 1, 3**600 * (2**127 - 1),
]


@pytest.mark.parametrize("n", CASES)
def test_factorize_is_a_prime_factorization(n: int) -> None:
    check(n, factorize(n))
    check(-n, factorize(-n))


def test_multiplicity_and_small_values() -> None:
    assert factorize(1) == []
    assert factorize(-1) == [-1]
    assert factorize(42) == [2, 3, 7]
    assert factorize(-42) == [-1, 2, 3, 7]
    assert factorize(1024) == [2] * 10
    assert factorize(M61**3 * 2**10) == [2] * 10 + [M61] * 3
    assert factorize(P30A**2 * 3) == [3, P30A, P30A]


def test_errors() -> None:
    with pytest.raises(ValueError, match="0 has no prime factorization"):
        factorize(0)
    with pytest.raises(TypeError):
        factorize(4.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        factorize("42")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**120), max_value=2**120).filter(bool))
def test_factorize_any_number(n: int) -> None:
    check(n, factorize(n))


def test_hard_cofactor_uses_pari_when_present() -> None:
    if not engine.pari_enabled():
        pytest.skip("cypari2 not installed here")
    # A 15+17-digit semiprime: no small factor, so the cofactor is PARI's job.
    assert P15 * P17 >= PARI_FROM
    assert factorize(P15 * P17) == [P15, P17]
    assert "PARI" in engine.versions()


def test_engine_without_pari() -> None:
    """TCPKIT_NO_PARI=1 runs FLINT alone, with the same answers."""
    code = (
        "import math\n"
        "from tcpkit.factoring import engine\n"
        "assert not engine.pari_enabled(), 'PARI still on'\n"
        f"n = {P15 * P17} * 2**5 * 3**20\n"
        "f = engine.factorize(n)\n"
        "assert math.prod(f) == n, f\n"
        f"assert f == [2]*5 + [3]*20 + [{P15}, {P17}], f\n"
        "assert 'PARI' not in engine.versions()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env={**os.environ, "TCPKIT_NO_PARI": "1"}, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"ok\n"


# -- the service's answers --------------------------------------------------------------


def test_answers_small_inline_big_offloaded() -> None:
    answer = make_answer(1000)
    assert answer(b"42") == b"2 3 7"
    assert answer(b"  -42 ") == b"-1 2 3 7"
    assert answer(b"+0001") == b""
    assert answer(b"-1") == b"-1"
    assert answer(str(INLINE_BELOW - 1).encode()) == b"3 5 17 257 641 65537 6700417"
    big = answer(str(INLINE_BELOW + 1).encode())
    assert isinstance(big, Offload)
    assert big.func(*big.args) == b"274177 67280421310721"
    assert factor_digits(True, b"18446744073709551617") == b"-1 274177 67280421310721"


@pytest.mark.parametrize(("line", "message"), [
    (b"abc", 'not an integer: "abc"'),
    (b"0", "0 has no prime factorization"),
    (b"-000", "0 has no prime factorization"),
    (b"4 2", 'not an integer: "4 2"'),
    (b"", 'not an integer: ""'),
    (b"9" * 1001, "too many digits (max 1000)"),
])
def test_bad_requests(line: bytes, message: str) -> None:
    with pytest.raises(RequestError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        make_answer(1000)(line)


def test_max_digits_is_checked_before_any_work() -> None:
    with pytest.raises(RequestError, match=r"too many digits \(max 5\)"):
        make_answer(5)(b"123456")
    configured = SERVICE.configured(Options(max_digits=5))
    assert configured.answer_block is None  # the block path would skip the check


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**64 - 1), min_size=1, max_size=50))
def test_block_path_matches_line_path(numbers: list[int]) -> None:
    block = b"".join(b"%d\n" % n for n in numbers)
    answer = make_answer(1000)
    expected = [answer(b"%d" % n) for n in numbers]
    replies = b"".join(bytes(r) + b"\n" for r in expected if isinstance(r, bytes))
    assert answer_block(block) == replies


@pytest.mark.parametrize("block", [
    b"42\n-42\n", b"42\r\n", b"0\n", b"18446744073709551616\n", b" 42\n", b"x\n",
])
def test_block_path_declines_what_it_does_not_handle(block: bytes) -> None:
    assert answer_block(block) is None
