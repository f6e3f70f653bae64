"""``tcpkit factor`` as a batch client: output byte-identical to GNU factor."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable

import pytest

from helpers.servers import Server, needs, run, script

GNU_FACTOR = shutil.which("factor") or "/usr/bin/factor"


def numbers_gnu_factors_quickly(count: int) -> list[int]:
    """1, primes, random 64-bit numbers, and 65-104-bit ones (fixed seed).

    All below 2**128: GNU factor 9.1 prints its multi-precision results (past
    2**128) ahead of the buffered smaller ones, out of input order, so a
    byte-for-byte comparison is only meaningful below that.
    """
    rng = random.Random(4)
    numbers = [1, 2, 3, 4, 2**61 - 1, 2**64 - 59, 2**64 - 1, 2**64, 2**64 + 1, 2**127 - 1]
    numbers += [rng.randrange(2, 2**64) for _ in range(count)]
    numbers += [rng.randrange(2, 2**64) * rng.randrange(2, 2**40) for _ in range(count // 10)]
    rng.shuffle(numbers)
    return numbers


@needs("factor")
@pytest.mark.parametrize("window", ["10000", "7"])
def test_show_number_is_byte_identical_to_gnu_factor(
        serve: Callable[..., Server], window: str) -> None:
    server = serve("factor")
    stdin = "".join(f"{n}\n" for n in numbers_gnu_factors_quickly(3000)).encode()
    # GNU factor reads whitespace-separated tokens: so does tcpkit factor.
    stdin = stdin.replace(b"\n1\n", b"\n  1\t", 1) + b"0042 +17\n"
    ours = run([*script("tcpkit"), "factor", "--show-number", "-s", f"127.0.0.1:{server.port}",
                "--window", window], stdin=stdin, timeout=120)
    gnu = run([GNU_FACTOR], stdin=stdin, timeout=120)
    assert gnu.returncode == 0, gnu.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == gnu.stdout
    assert ours.stdout.count(b"\n") == len(stdin.split())


@needs("factor")
def test_big_numbers_give_gnu_factors_lines(serve: Callable[..., Server]) -> None:
    """Past 2**128 GNU factor reorders its output; every line is still the same."""
    server = serve("factor")
    # Only small factors besides the largest: GNU factor's Pollard rho is quick on them.
    numbers = [3**90 * (2**89 - 1), 2**200, 10**40, 42, 2**130 * (2**61 - 1),
               7**50 * (2**127 - 1), 1, 2**521 - 1]
    stdin = "".join(f"{n}\n" for n in numbers).encode()
    ours = run([*script("tcpkit"), "factor", "--show-number", "-s", f"127.0.0.1:{server.port}"],
               stdin=stdin, timeout=120)
    gnu = run([GNU_FACTOR], stdin=stdin, timeout=120)
    assert ours.returncode == gnu.returncode == 0
    assert sorted(ours.stdout.splitlines()) == sorted(gnu.stdout.splitlines())
    assert [line.split(b":")[0] for line in ours.stdout.splitlines()] == [
        str(n).encode() for n in numbers]  # ours in input order


def test_errors_go_to_stderr_and_the_rest_continue(serve: Callable[..., Server]) -> None:
    server = serve("factor", "--max-digits", "40")
    done = run([*script("tcpkit"), "factor", "-s", f"127.0.0.1:{server.port}"],
               stdin=b"42 abc 0\n" + b"9" * 41 + b" 17\n", timeout=60)
    assert done.returncode == 1
    assert done.stdout == b"2 3 7\n17\n"
    assert done.stderr == (b'abc: error: not an integer: "abc"\n'
                           b"0: error: 0 has no prime factorization\n"
                           + b"9" * 41 + b": error: too many digits (max 40)\n")


def test_bad_window_is_a_usage_error() -> None:
    done = run([*script("tcpkit"), "factor", "--window", "0", "42"], timeout=30)
    assert done.returncode == 2
    assert b"--window" in done.stderr
