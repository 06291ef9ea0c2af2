"""95 % confidence intervals over seeds, paired by seed, and the decision rule of a claim check (bench/claims.py).

A run's seed draws its training and test subsets, the order of its batches and its initialisation, so the spread
of a quantity over seeds holds both the test-sampling noise and the training noise. Two methods run with the same
seed see the same data; their difference per seed (``paired_interval``) removes what the seed shares, and a
Student-t interval over the n seeds (n - 1 degrees of freedom) says where the mean difference lies.

Why t over seeds and not a bootstrap over test examples x seeds: with 3-5 seeds a resampling of seeds has only a
handful of distinct outcomes, and resampling test examples alone ignores the training noise that differs between
seeds (the larger part at a few hundred steps per task). The t interval assumes roughly normal per-seed values,
which a mean over hundreds of test examples is. scipy is not a dependency: the 97.5 % quantiles of Student's t are
tabulated (standard values, checked by integrating the density in tests/test_claims.py).

Decision rule (``verdict``) for a claim "quantity > bound" (``greater``) or "quantity < bound" (``less``):
    reproduced                  the whole interval lies on the claimed side of ``bound``
    not reproduced              the whole interval lies on the other side, or (``null_band`` given) inside
                                [bound - null_band, bound + null_band]: the effect is practically absent
    inconclusive at this scale  otherwise, and always with fewer than 2 seeds
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive at this scale"

# Two-sided 95 % critical values of Student's t (the 0.975 quantile) by degrees of freedom.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
Z_975 = 1.960  # the limit for infinitely many degrees of freedom


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (exact table values up to 30; above,
    linear in 1/df between 30, 40, 60, 120 and infinity, as printed tables are read: error < 0.001)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    if df in T_975:
        return T_975[df]
    points = sorted(T_975.items()) + [(math.inf, Z_975)]
    for (d0, t0), (d1, t1) in zip(points, points[1:]):
        if d0 < df < d1:
            x, x0, x1 = 1 / df, 1 / d0, (0.0 if math.isinf(d1) else 1 / d1)
            return t1 + (t0 - t1) * (x - x1) / (x0 - x1)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Interval:
    """Mean, sample standard deviation (n - 1) and 95 % t interval of n values; ``low``/``high`` are None for n < 2."""
    mean: float
    std: float
    n: int
    low: float | None
    high: float | None


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` with its 95 % Student-t interval (mean ± t_{0.975, n-1} s / sqrt(n))."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, 0.0, 1, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The 95 % interval of the mean difference a_i - b_i, the pairs sharing their seed."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same number of seeds, got {len(a)} and {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b)])


def verdict(interval: Interval, direction: str, bound: float = 0.0, null_band: float | None = None) -> str:
    """The decision rule of the module docstring for the claim "quantity > bound" (``direction="greater"``) or
    "quantity < bound" (``"less"``)."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if interval.low is None or interval.high is None:
        return INCONCLUSIVE
    low, high = interval.low, interval.high
    if direction == "less":  # mirror: "q < bound" is "-q > -bound"
        low, high, bound = -high, -low, -bound
    if low > bound:
        return REPRODUCED
    if high < bound:
        return NOT_REPRODUCED
    if null_band is not None and bound - null_band <= low and high <= bound + null_band:
        return NOT_REPRODUCED
    return INCONCLUSIVE
