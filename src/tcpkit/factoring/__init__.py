"""Integer factorization for the factor service and for ``tcpkit.factorize``.

:mod:`~tcpkit.factoring.engine` picks FLINT or PARI per size band;
:mod:`~tcpkit.factoring.bands` holds the thresholds and the measurements
behind them.
"""

from __future__ import annotations

from tcpkit.factoring.engine import factor_pairs, factorize, pari_enabled

__all__ = ["factor_pairs", "factorize", "pari_enabled"]
