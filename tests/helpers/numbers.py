"""The factor tests' numbers: one semiprime maker, and the numbers tuned to a job's length.

The sizes matter more than the values: below 2**64 a number is factored inline,
above it in a worker process; how long a worker takes grows with the smaller
factor (FLINT: ~0.25 s for 48 digits, ~2 s for 58, minutes for 76).
"""

from __future__ import annotations

from functools import cache

import flint

from tcpkit import factorize


def next_prime(n: int) -> int:
    """The smallest prime >= ``n``."""
    p = flint.fmpz(n)
    while not p.is_prime():
        p += 1
    return int(p)


@cache
def semiprime_factors(digits: int, nth: int = 0) -> tuple[int, int]:
    """Two primes of about ``digits / 2`` digits each (their product has about
    ``digits`` digits); ``nth`` > 0 gives the nth pair after the first (a different
    number of the same size)."""
    half = digits // 2
    low, high = 10 ** (half - 1), 3 * 10 ** (digits - half - 1)
    if nth:
        low, high = semiprime_factors(digits, nth - 1)
        low, high = low + 1, high + 1
    return next_prime(low), next_prime(high)


def semiprime(digits: int, nth: int = 0) -> int:
    """A product of two primes of about ``digits / 2`` digits each (see above)."""
    p, q = semiprime_factors(digits, nth)
    return p * q


def semiprimes(digits: int, count: int) -> list[int]:
    """``count`` different semiprimes of ``digits`` digits."""
    return [semiprime(digits, nth) for nth in range(count)]


def reply_for(n: int) -> bytes:
    """The factor service's reply line for ``n``."""
    return " ".join(map(str, factorize(n))).encode() + b"\n"


# -- numbers tuned to a job's length --------------------------------------------------

# Minutes of work: never finishes within a test (time limits, cancellation).
HARD = (100000000000000000000000000000000000000000000000151
        * 300000000000000000000000000000000000000000000000073)  # 100 digits
HUGE = 2146835378817558231380297107186697853901073308050436695802022092129  # 67 digits, p*q
HUGE2 = 2047263573228486329701800974642617119101827491777211449602342965897


def long_semiprime() -> int:
    """76 digits: minutes of FLINT time (a client leaves while it runs)."""
    return semiprime(76)


# About 0.4 CPU seconds: in flight when a signal arrives, done soon after.
MEDIUM_FACTORS = (100000000000000000000000067, 700000000000000000000000039)
MEDIUM = MEDIUM_FACTORS[0] * MEDIUM_FACTORS[1]  # 53 digits
# About two seconds of FLINT: surely still in flight half a second in.
SLOW_FACTORS = (1203581308086032114270498633, 1232288936753847694672016461)
SLOW = SLOW_FACTORS[0] * SLOW_FACTORS[1]  # 55 digits

# Milliseconds each, but offloaded to a worker (24-30 digits).
MID = [369088188892207674398867, 159073021591612557400973,
       505950662815779426558664101241, 747797432599629278130896886613]
BIG = "1000000000000000000000000000000000000000000000000000000000007"  # a 61-digit prime
