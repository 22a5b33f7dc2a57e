"""Error bars over seeds: the t table, mean/std/95% interval, and the verdict rule of
simulations.stats, on numbers worked out by hand here."""

from __future__ import annotations

import math

import pytest

from simulations import stats


def test_t_quantiles_match_the_t_distribution() -> None:
    """Closed forms for df 1 and 2, the normal quantile in the limit, and (where mpmath, a
    dependency of torch's sympy, is there) the t CDF inverted numerically for every df up
    to 40 and beyond, across the table's end at 30."""
    p = 0.975
    assert stats.t975(1) == pytest.approx(math.tan(math.pi * (p - 0.5)), abs=1e-6)
    assert stats.t975(2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), abs=1e-6)
    assert stats.t975(10**6) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError, match="df=0"):
        stats.t975(0)
    mpmath = pytest.importorskip("mpmath")

    def exact(df: int) -> float:
        def cdf(t: float) -> float:
            tail = mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True)
            return 1 - tail / 2

        return float(mpmath.findroot(lambda t: cdf(t) - p, 2))

    for df in [*range(1, 41), 60, 120]:
        assert stats.t975(df) == pytest.approx(exact(df), abs=1e-6), df


def test_spread_of_constructed_numbers() -> None:
    s = stats.spread([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # ddof = 1
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(std) and s.se == pytest.approx(std / 2)
    assert s.ci95 == pytest.approx(3.182446 * std / 2)
    flat = stats.spread([2.0, 2.0, 2.0])
    assert (flat.mean, flat.std, flat.ci95) == (2.0, 0.0, 0.0)
    one = stats.spread([7.0])
    assert one.n == 1 and one.mean == 7.0
    assert math.isnan(one.std) and math.isnan(one.ci95) and math.isnan(one.se)
    with pytest.raises(ValueError):
        stats.spread([])


def test_differs_counts_only_a_gap_beyond_twice_the_combined_standard_error() -> None:
    # se of [1, 2, 3] is 1/sqrt(3) each, so the combined se is sqrt(2/3) = 0.816...
    se = math.sqrt(2 / 3)
    delta, combined, verdict = stats.differs([1, 2, 3], [11, 12, 13])
    assert (delta, verdict) == (-10.0, stats.DIFFERS) and combined == pytest.approx(se)
    near = stats.differs([1, 2, 3], [2.5, 3.5, 4.5])  # |delta| 1.5 < 2 se = 1.63
    assert near.delta == -1.5 and near.verdict == stats.WITHIN_NOISE
    far = stats.differs([1, 2, 3], [2.7, 3.7, 4.7])  # |delta| 1.7 > 1.63
    assert far.verdict == stats.DIFFERS and far.delta == pytest.approx(-1.7)
    # Zero variance: no noise, so any gap counts and none is within noise.
    assert stats.differs([1, 1], [1, 1]) == (0.0, 0.0, stats.WITHIN_NOISE)
    assert stats.differs([1, 1], [1.001, 1.001]).verdict == stats.DIFFERS
    # One side with noise, the other exact: only the noisy side's se counts (1 here).
    assert stats.differs([0, 2], [2.9, 2.9]).verdict == stats.WITHIN_NOISE
    assert stats.differs([0, 2], [3.1, 3.1]).verdict == stats.DIFFERS
    # One run on a side gives no estimate of its noise: no verdict either way.
    for a, b in (([1.0], [5.0, 6.0]), ([1.0], [100.0])):
        delta, combined, verdict = stats.differs(a, b)
        assert delta == 1.0 - sum(b) / len(b) and math.isnan(combined)
        assert verdict == stats.UNDETERMINED


def test_a_paired_difference_counts_what_the_seeds_share() -> None:
    """Seeds far apart (one data set harder than another) but the same rise on each: the
    unpaired rule sees noise, the paired one the rise; a rise that flips sign does not count."""
    base = [0.13, 0.17, 0.15, 0.19, 0.14]
    raised = [b + 0.003 + 0.0002 * k for k, b in enumerate(base)]
    assert stats.differs(raised, base).verdict == stats.WITHIN_NOISE
    paired = stats.differs_paired(raised, base)
    assert paired.verdict == stats.DIFFERS and paired.delta > 0
    flips = [b + (0.003 if k % 2 else -0.003) for k, b in enumerate(base)]
    assert stats.differs_paired(flips, base).verdict == stats.WITHIN_NOISE
    assert stats.differs_paired([1.0], [0.5]).verdict == stats.UNDETERMINED
    with pytest.raises(ValueError, match="equal counts"):
        stats.differs_paired([1.0, 2.0], [1.0])


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_diverged_runs_value_gives_its_mean_and_no_spread(bad: float) -> None:
    """A comparison with a diverged seed (its loss inf or NaN) still summarises: the mean
    carries the divergence, the spread is NaN (it once raised inside statistics.stdev)."""
    out = stats.spread([0.5, 0.6, bad])
    assert out.n == 3 and not math.isfinite(out.mean)
    assert math.isnan(out.std) and math.isnan(out.ci95)
