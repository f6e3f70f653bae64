"""The size-aware factoring engine: FLINT where it is fastest, PARI where it is.

Neither library wins every size (see :mod:`tcpkit.factoring.bands` for the
measurements), so :func:`factorize` routes each number:

1. below 10**20: FLINT's ``fmpz.factor`` outright (about 12 us below 2**64);
2. larger: FLINT's trial division strips the small prime factors (and runs its
   cheap rho/ECM probes); a prime cofactor ends the work;
3. a composite cofactor goes to PARI's ``factor`` (MPQS and ECM) from
   :data:`~tcpkit.factoring.bands.PARI_FROM` on, to FLINT below it.

PARI comes from cypari2, which ships binary wheels for some platforms only; it
is imported lazily (the event-loop process never needs it, the worker
processes preload it) and the engine falls back to FLINT alone when it is
missing or disabled with ``TCPKIT_NO_PARI=1``.  Every factor returned is prime
or a BPSW probable prime (no counterexample is known).
"""

from __future__ import annotations

import os
from functools import cache
from importlib import metadata
from typing import Any

import flint

from tcpkit.factoring.bands import INLINE_BELOW, PARI_FROM, TRIAL_PRIMES

PARI_STACK = 8 << 20  # bytes PARI starts with ...
PARI_STACK_MAX = 512 << 20  # ... and may grow to (bounds a worker's memory)

Pairs = list[tuple[int, int]]


def factorize(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order, with multiplicity.

    ``-1`` leads for negative numbers; ``1`` has no factors; ``0`` has no
    factorization and raises :class:`ValueError`.
    """
    if not isinstance(n, int):
        raise TypeError(f"factorize() needs an int, not {type(n).__name__}")
    if n == 0:
        raise ValueError("0 has no prime factorization")
    factors = [-1] if n < 0 else []
    for prime, exponent in factor_pairs(abs(n)):
        factors.extend([prime] * exponent)
    return factors


def factor_pairs(n: int) -> Pairs:
    """``[(prime, exponent), ...]`` of ``n >= 1`` in ascending order of primes."""
    if n < max(INLINE_BELOW, PARI_FROM):  # FLINT's order is not always ascending (2**38-1)
        return sorted((int(p), e) for p, e in flint.fmpz(n).factor())
    found: dict[int, int] = {}
    for part, exponent in flint.fmpz(n).factor(trial_limit=TRIAL_PRIMES):
        value = int(part)
        if part.is_probable_prime():
            found[value] = found.get(value, 0) + exponent
        else:
            for prime, inner in _factor_cofactor(value):
                found[prime] = found.get(prime, 0) + inner * exponent
    return sorted(found.items())


def _factor_cofactor(n: int) -> Pairs:
    """A composite without small factors: to PARI if it is large enough and present."""
    pari = _pari() if n >= PARI_FROM else None
    if pari is None:
        return sorted((int(p), e) for p, e in flint.fmpz(n).factor())
    table = pari.factor(n)
    return [(int(p), int(e)) for p, e in zip(table[0], table[1], strict=True)]


def pari_enabled() -> bool:
    """Whether the engine uses PARI (cypari2 installed and not disabled)."""
    return _pari() is not None


@cache
def _pari() -> Any:
    if os.environ.get("TCPKIT_NO_PARI", "") not in ("", "0"):
        return None
    try:
        import cypari2
    except ImportError:
        return None
    pari = cypari2.Pari(size=PARI_STACK, sizemax=PARI_STACK_MAX)
    pari.default("debugmem", 0)  # no "increasing stack size" warnings on stderr
    return pari


def preload() -> None:
    """Import and start PARI now (worker processes call this before forking)."""
    _pari()


def versions() -> dict[str, str]:
    """Library versions, for benchmark records and ``--version`` output."""
    found = {"python-flint": flint.__version__}
    pari = _pari()
    if pari is not None:
        major, minor, patch = (int(x) for x in pari.version()[:3])
        found["cypari2"] = metadata.version("cypari2")
        found["PARI"] = f"{major}.{minor}.{patch}"
    return found
