"""Measure FLINT and PARI per number class: the data behind tcpkit.factoring.bands.

    python bench/factor_numbers.py            # the number sets (fixed seed)
    taskset -c 0 python bench/factor_bands.py [--sets semi20,semi30] [--limit 7]

For each set, prints the median time per number of

* ``flint``  -- ``fmpz(n).factor()`` (trial division, rho, ECM, quadratic sieve)
* ``pari``   -- ``pari.factor(n)`` (PARI's MPQS / ECM), including conversion
* ``engine`` -- ``tcpkit.factorize(n)`` as it is now (the banded engine)

The thresholds in ``src/tcpkit/factoring/bands.py`` come from this table; rerun
it after upgrading either library.  One process, one core, no server: this is
what the libraries cost, the floor the server is compared against.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import flint

DEFAULT_SETS = ["random64", "smooth256", "smooth512",
                *(f"semi{d}" for d in (18, 20, 22, 24, 26, 28, 29, 30, 32, 34, 36, 39, 40, 48))]


def methods() -> dict[str, Callable[[int], object]]:
    from tcpkit.factoring import factorize

    found: dict[str, Callable[[int], object]] = {"flint": lambda n: flint.fmpz(n).factor()}
    try:
        import cypari2

        pari = cypari2.Pari()
        found["pari"] = lambda n: pari.factor(n)
    except ImportError:
        pass
    found["engine"] = factorize
    return found


def median_seconds(func: Callable[[int], object], numbers: list[int], budget: float) -> float:
    """Median time per number; stops early (and says so by NaN) past ``budget`` seconds."""
    times = []
    for n in numbers:
        start = time.perf_counter()
        func(n)
        times.append(time.perf_counter() - start)
        if sum(times) > budget:
            break
    return statistics.median(times)


def show(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.2f} s "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "build" / "factor")
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--limit", type=int, default=7, help="numbers per set (random64: x1000)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per method and set")
    args = parser.parse_args()
    funcs = methods()
    print(f"{'set':<10}" + "".join(f"{name:>13}" for name in funcs))
    for name in args.sets.split(","):
        lines = (args.dir / f"{name}.txt").read_text().split()
        limit = args.limit * 1000 if name == "random64" else args.limit
        numbers = [int(x) for x in lines[:limit]]
        row = [median_seconds(f, numbers, args.budget) for f in funcs.values()]
        print(f"{name:<10}" + "".join(f"{show(s):>13}" for s in row), flush=True)


if __name__ == "__main__":
    main()
