"""Generate the factor benchmark's number sets, reproducibly (fixed seed).

    python bench/factor_numbers.py [--out bench/build/factor] [--count 100000]

Writes one file per class of issue 4's table, one number per line:

* ``random64.txt``   -- ``--count`` random integers in [2, 2**64)
* ``semi29.txt`` ... ``semi67.txt`` -- products of two random primes of about
  half the digits each (the hard case: no small factor to find)
* ``smooth256.txt``, ``smooth512.txt`` -- small primes times one big prime,
  256 and 512 bits in all (the easy case for trial division and ECM)
* ``semiNN.txt`` for the band scan (bench/factor_bands.py): 18..40 digits

Same seed, same files: every run of the benchmark factors the same numbers.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import flint

SEED = 20261125
SEMIPRIME_DIGITS = (29, 39, 48, 58, 67)
BAND_DIGITS = (18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 40)
PER_CLASS = 7  # numbers per hard class: medians of 7 are stable enough on a noisy box


def random_prime(rng: random.Random, digits: int) -> int:
    """A random (BPSW probable) prime with exactly ``digits`` decimal digits."""
    while True:
        n = rng.randrange(10 ** (digits - 1), 10**digits) | 1
        if flint.fmpz(n).is_probable_prime():
            return n


def semiprime(rng: random.Random, digits: int) -> int:
    """p*q with ``digits`` digits and p, q of about half as many."""
    while True:
        low = digits // 2
        n = random_prime(rng, low) * random_prime(rng, digits - low)
        if len(str(n)) == digits:
            return n


def smooth_times_prime(rng: random.Random, bits: int) -> int:
    """Primes below 10**4 multiplied together, times one prime filling up to ``bits``."""
    small = 1
    while small.bit_length() < bits // 3:
        small *= random_prime(rng, rng.randrange(2, 5))
    rest = bits - small.bit_length()
    while True:
        p = rng.randrange(1 << (rest - 1), 1 << rest) | 1
        if flint.fmpz(p).is_probable_prime():
            return small * p


def write(path: Path, numbers: list[int]) -> None:
    path.write_text("".join(f"{n}\n" for n in numbers))


def classes(count: int) -> dict[str, Callable[[random.Random], list[int]]]:
    sets: dict[str, Callable[[random.Random], list[int]]] = {
        "random64": lambda rng: [rng.randrange(2, 1 << 64) for _ in range(count)],
        "smooth256": lambda rng: [smooth_times_prime(rng, 256) for _ in range(PER_CLASS)],
        "smooth512": lambda rng: [smooth_times_prime(rng, 512) for _ in range(PER_CLASS)],
    }
    for digits in sorted({*SEMIPRIME_DIGITS, *BAND_DIGITS}):
        sets[f"semi{digits}"] = lambda rng, d=digits: [semiprime(rng, d) for _ in range(PER_CLASS)]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build" / "factor")
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in classes(args.count).items():
        rng = random.Random(f"{SEED}-{name}")  # each set independent of the others
        write(args.out / f"{name}.txt", make(rng))
    print(f"wrote {len(classes(args.count))} number sets to {args.out}")


if __name__ == "__main__":
    main()
