"""Error bars over seeds: mean, sample standard deviation, a 95% Student t interval of the
mean, and the rule that says whether two sets of runs differ by more than their noise.

scipy is not a dependency, so the t quantile comes from a table (df 1..30, to 6 decimals)
and, past it, the Cornish-Fisher expansion around the normal quantile (within 3e-8 there).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

#: t_{0.975}(df) for df = 1..30 (two-sided 95%), index df - 1.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip

DIFFERS, WITHIN_NOISE, UNDETERMINED = "differs", "within noise", "undetermined (n < 2)"


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"df={df} must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    )


class Spread(NamedTuple):
    """n values as mean, sample standard deviation (ddof=1) and the half-width of the 95% t
    interval of the mean (the interval is mean +- ci95); std and ci95 are NaN for n = 1,
    since one run says nothing about the spread."""

    n: int
    mean: float
    std: float
    ci95: float

    @property
    def se(self) -> float:
        """Standard error of the mean, std / sqrt(n) (NaN for n = 1)."""
        return self.std / math.sqrt(self.n)


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample std and 95% t half-width of `values` (at least one); std and ci95 are
    NaN when a value is not finite."""
    if not values:
        raise ValueError("spread needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    if n == 1 or not all(math.isfinite(v) for v in values):
        # a diverged run's loss (inf or NaN) shows in the mean; its spread means nothing
        # (and statistics.stdev cannot take it)
        return Spread(n, mean, math.nan, math.nan)
    std = statistics.stdev(values)
    return Spread(n, mean, std, t975(n - 1) * std / math.sqrt(n))


class Difference(NamedTuple):
    """mean(a) - mean(b), the combined standard error and the verdict of `differs`."""

    delta: float
    se: float
    verdict: str


def differs(a_values: Sequence[float], b_values: Sequence[float]) -> Difference:
    """Whether a and b (say, one figure over the seeds of two configs) differ beyond noise.

    The rule: with se_x = std_x / sqrt(n_x) (sample std), the difference of means counts
    (DIFFERS) when |mean_a - mean_b| > 2 * sqrt(se_a^2 + se_b^2), about a two-sided 95% test
    for normal means; otherwise it is WITHIN_NOISE. With zero variance on both sides any
    nonzero difference counts. A side with one value has no estimate of its noise, so the
    combined standard error is NaN and the verdict UNDETERMINED: run more seeds.
    """
    a, b = spread(a_values), spread(b_values)
    delta, se = a.mean - b.mean, math.hypot(a.se, b.se)
    if math.isnan(se):
        return Difference(delta, se, UNDETERMINED)
    return Difference(delta, se, DIFFERS if abs(delta) > 2 * se else WITHIN_NOISE)


def differs_paired(a_values: Sequence[float], b_values: Sequence[float]) -> Difference:
    """`differs` for paired values: a_i and b_i share everything but what is compared (the
    same seed: data, initial model and batches), so the noise is that of the differences
    d_i = a_i - b_i: it counts when |mean d| > 2 std(d) / sqrt(n). Seed-to-seed variation
    that moves both alike (one data set's harder than another's) then cancels."""
    if len(a_values) != len(b_values):
        counts = f"{len(a_values)} and {len(b_values)}"
        raise ValueError(f"paired values need equal counts, not {counts}")
    d = spread([a - b for a, b in zip(a_values, b_values, strict=True)])
    se = d.std / math.sqrt(d.n)
    if math.isnan(se):
        return Difference(d.mean, se, UNDETERMINED)
    return Difference(d.mean, se, DIFFERS if abs(d.mean) > 2 * se else WITHIN_NOISE)
