"""Which library factors what: the engine's thresholds, in one table.

Measured on this project's machine (2026-11-25, one core, python-flint 0.9 =
FLINT 3, cypari2 2.2.0 = PARI 2.15) with ``bench/factor_bands.py`` over the
fixed-seed sets of ``bench/factor_numbers.py``; median time per number:

    set         flint fmpz.factor   pari.factor   flint trial division (1000 primes)
    random64         11.7 us          128 us
    semi18           0.11 ms          0.59 ms
    semi20           0.30 ms          0.61 ms
    semi22           1.48 ms          0.60 ms
    semi24           2.94 ms          0.74 ms
    semi28           2.43 ms          1.31 ms
    semi30           3.47 ms          1.87 ms
    semi36           9.56 ms          7.21 ms
    semi39           53.3 ms          22.1 ms
    semi48           200 ms           214 ms
    semi58           1.54 s           1.69 s
    semi67           16.7 s           11.8 s       (one number)
    smooth256        6.22 ms          6.40 ms          8 us
    smooth512        33.5 ms          17.9 ms         12 us (10,000 primes: 82 us)

(``semiNN``: two primes of about NN/2 digits each; ``smoothNNN``: primes below
10**4 times one big prime, NNN bits in all.)  The engine with the thresholds
below: semi20 265 us, semi22 617 us, semi29 1.63 ms, semi39 14.6 ms, smooth256
79 us, smooth512 254 us.  The machine was shared and noisy: rows from different
runs differ by up to 2x; compare within a row.

What the data says:

* Below 2**64 FLINT wins by 10x and is cheaper than a trip to a worker
  process: those numbers are factored inline on the event loop.
* Up to 10**20 FLINT does it all (it beats PARI on semiprimes up to ~20 digits).
* Any larger number first loses its small prime factors to FLINT's trial
  division (microseconds, and it also runs FLINT's cheap rho/ECM probes); a
  cofactor that is a (BPSW probable) prime ends the work.  PARI is slow to find
  small factors next to a big prime (25-40 ms for 4-digit primes times a
  100-digit prime) -- so trial division goes to 10,000 primes first.
* A composite cofactor from 21 digits on goes to PARI when cypari2 is
  installed (FLINT otherwise): PARI's MPQS beats FLINT's quadratic sieve by
  1.5-8x at 22-39 digits and 1.4x at 67; at 48-58 digits the two are within
  10% of each other (run to run noise on this machine is larger).
"""

from __future__ import annotations

INLINE_BELOW = 1 << 64
"""Numbers below this are factored inline by FLINT (no worker round trip)."""

TRIAL_PRIMES = 10_000
"""Primes (up to 104,729) FLINT trial-divides by before a cofactor is judged.

0.08 ms on a 512-bit number; 1,000 primes (0.013 ms) left 4-digit factors
that cost PARI 25-40 ms to find (smooth512).
"""

PARI_FROM = 10**20
"""A composite cofactor at or above this goes to PARI (when installed)."""
