"""How sure a rate over n items is: the Wilson score interval (95 %), and its comparison with chance.

A benchmark of 30 items that scores 0.40 cannot tell 0.30 (chance for 3-4 choices) from 0.55: the
interval says so. The Wilson interval inverts the normal test of a binomial share: it is the set of p
for which |k/n - p| <= z * sqrt(p (1 - p) / n), and unlike the textbook k/n +- z sqrt(k/n (1 - k/n) / n)
it never leaves [0, 1] and does not shrink to a point at 0/n or n/n.

    python -m pytest -q tests/test_eval_intervals.py
"""
from __future__ import annotations

import math
from typing import Optional

Z95 = 1.959963984540054   # the 97.5 % quantile of the standard normal: a two-sided 95 % interval


def wilson_interval(k: int, n: int, z: float = Z95) -> Optional[tuple[float, float]]:
    """(low, high) of the Wilson score interval for k successes in n trials; None for n = 0.

    Squaring |p_hat - p| = z sqrt(p (1 - p) / n) gives a quadratic in p whose two roots are
        (p_hat + z^2 / 2n  -+  z sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2)) / (1 + z^2 / n)."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k={k}: expected 0 <= k <= n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)   # exact 0 / 1 at k = 0 / n, not -1e-17


def accuracy_interval(acc: float, n: int, z: float = Z95) -> Optional[tuple[float, float]]:
    """The interval of an accuracy reported as a share of n items (k = acc x n, an integer)."""
    if n <= 0 or acc is None or math.isnan(acc):
        return None
    return wilson_interval(round(acc * n), n, z)


def against_chance(interval: Optional[tuple[float, float]], chance: Optional[float]) -> str:
    """"above chance", "below chance", or "not distinguishable from chance" (the interval holds it)."""
    if interval is None or chance is None or math.isnan(chance):
        return "chance unknown"
    low, high = interval
    if low > chance:
        return "above chance"
    if high < chance:
        return "below chance"
    return "not distinguishable from chance"
