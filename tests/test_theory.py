"""The bounds of Cooperative SGD and Overlap-Local-SGD, pinned to hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoop import theory
from fedcoop.errors import ConfigError


def test_effective_lr_eq_13() -> None:
    assert theory.effective_lr(0.1, 8) == pytest.approx(0.1)
    assert theory.effective_lr(0.1, 8, 1) == pytest.approx(0.1 * 8 / 9)
    assert theory.effective_lr(0.3, 4, 4) == pytest.approx(0.15)


# --- eq. (22) ------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1, 2, 3, 10, 100])
def test_zeta_tau_solves_eq_22(tau: int) -> None:
    z = theory.zeta_tau(tau)
    assert 0 <= z < 1
    assert 2 * z**2 / (1 - z**2) == pytest.approx(tau - 1, abs=1e-9)


@pytest.mark.parametrize("tau", [2, 5, 20])
def test_zeta_tau_equalises_dpsgd_and_pasgd_floors(tau: int) -> None:
    args = {"eta": 0.05, "L": 2.0, "sigma2": 1.5, "m": 8}
    dpsgd = theory.error_floor(tau=1, zeta=theory.zeta_tau(tau), **args)
    pasgd = theory.error_floor(tau=tau, zeta=0.0, **args)
    assert dpsgd == pytest.approx(pasgd, rel=1e-9)


def test_zeta_tau_tends_to_one() -> None:
    values = [theory.zeta_tau(t) for t in range(1, 50)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert theory.zeta_tau(1) == 0.0


# --- eqs. (17), (18) ---------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1, 2, 7])
def test_error_floor_closed_form_for_pasgd(tau: int) -> None:
    eta, L, sigma2, m = 0.05, 3.0, 2.0, 4
    expected = eta * L * sigma2 / m + eta**2 * L**2 * sigma2 * (tau - 1)
    assert theory.error_floor(eta, L, sigma2, m, tau, 0.0) == pytest.approx(expected)


def test_error_floor_with_auxiliary_node_by_hand() -> None:
    # eta_eff = 0.1 * 4/5 = 0.08; sync term 0.08 * 2 * 3/4 = 0.12;
    # network term 0.08^2 * 4 * 3 * ((1.25/0.75) * 2 - 1) * 1.25^2 = 0.28.
    assert theory.error_floor(0.1, 2.0, 3.0, 4, 2, 0.5, v=1) == pytest.approx(0.40)


def test_error_floor_is_monotone_in_tau_and_zeta() -> None:
    floor = [
        [theory.error_floor(0.02, 1.0, 1.0, 8, tau, z) for z in np.linspace(0, 0.95, 12)]
        for tau in range(1, 10)
    ]
    grid = np.array(floor)
    assert (np.diff(grid, axis=0) > 0).all()  # in tau
    assert (np.diff(grid, axis=1) > 0).all()  # in zeta


def test_error_floor_without_noise_is_zero() -> None:
    assert theory.error_floor(0.1, 1.0, 0.0, 4, 5, 0.9) == 0.0


def test_error_bound_eq_17() -> None:
    eta, L, sigma2, m, tau, z, K, f_gap, v = 0.1, 2.0, 3.0, 4, 2, 0.5, 1000, 5.0, 1
    floor = theory.error_floor(eta, L, sigma2, m, tau, z, v)
    bound = theory.error_bound(eta, L, sigma2, m, tau, z, K, f_gap, v)
    assert bound == pytest.approx(2 * 5.0 / (0.08 * 1000) + floor)
    longer = theory.error_bound(eta, L, sigma2, m, tau, z, 100 * K, f_gap, v)
    assert floor < longer < bound


# --- eq. (16) ------------------------------------------------------------------------------


def test_lr_condition_by_hand() -> None:
    # zeta = 0, tau = 1, v = 0: eta L + 5 eta^2 L^2.
    assert theory.lr_condition(0.1, 2.0, 4, 1, 0.0) == pytest.approx(0.2 + 5 * 0.04)
    # v = 1, m = 4, tau = 2, zeta = 0.5: eta_eff = 0.08, spread = 1.25 * 2/0.5 = 5.
    assert theory.lr_condition(0.1, 1.0, 4, 2, 0.5, v=1) == pytest.approx(0.08 + 5 * 0.08**2 * 25)


@pytest.mark.parametrize(
    ("L", "m", "tau", "zeta", "v"),
    [(1.0, 1, 1, 0.0, 0), (2.0, 8, 4, 0.5, 0), (0.5, 8, 1, 0.8, 1), (10.0, 16, 50, 0.99, 4)],
)
def test_max_learning_rate_meets_eq_16_with_equality(
    L: float, m: int, tau: int, zeta: float, v: int
) -> None:
    eta = theory.max_learning_rate(L, m, tau, zeta, v)
    assert theory.lr_condition(eta, L, m, tau, zeta, v) == pytest.approx(1.0, rel=1e-12)
    assert theory.lr_condition(0.99 * eta, L, m, tau, zeta, v) < 1
    assert theory.lr_condition(1.01 * eta, L, m, tau, zeta, v) > 1


def test_max_learning_rate_shrinks_with_tau_and_zeta() -> None:
    assert theory.max_learning_rate(1.0, 8, 4, 0.5) < theory.max_learning_rate(1.0, 8, 2, 0.5)
    assert theory.max_learning_rate(1.0, 8, 2, 0.9) < theory.max_learning_rate(1.0, 8, 2, 0.5)


# --- EASGD and generalized elastic averaging ---------------------------------------------------


@pytest.mark.parametrize("m", [1, 4, 8, 32])
def test_lemma_1(m: int) -> None:
    best = theory.easgd_best_alpha(m)
    assert best == pytest.approx(2 / (m + 2))
    assert theory.easgd_zeta(best, m) == pytest.approx(m / (m + 2))
    assert theory.easgd_alpha_limit(m) == pytest.approx(2 / (m + 1))
    grid = np.linspace(1e-4, theory.easgd_alpha_limit(m) - 1e-4, 500)
    assert min(theory.easgd_zeta(a, m) for a in grid) >= m / (m + 2) - 1e-12


def test_easgd_zeta_eq_20_by_hand() -> None:
    assert theory.easgd_zeta(0.1, 8) == pytest.approx(0.9)  # |1 - 0.1| > |1 - 0.9|
    assert theory.easgd_zeta(0.21, 8) == pytest.approx(0.89)  # |1 - 1.89| > |1 - 0.21|


@pytest.mark.parametrize("alpha", [0.0, 2 / 9, 0.5])
def test_easgd_zeta_refuses_alpha_outside_the_limit(alpha: float) -> None:
    with pytest.raises(ConfigError, match=r"alpha=.*0 < alpha < 2/\(m\+1\) = 0\.2222 for m=8"):
        theory.easgd_zeta(alpha, 8)


@pytest.mark.parametrize("m", [2, 8, 16])
@pytest.mark.parametrize("zeta", [0.0, 0.3, 0.9, 1.0])
def test_lemma_2(m: int, zeta: float) -> None:
    best = theory.generalized_elastic_best_alpha(zeta, m)
    assert best == pytest.approx((1 + zeta) / (m + 1 + zeta))
    low = theory.generalized_elastic_min_zeta(zeta, m)
    assert low == pytest.approx(m * zeta / (m + 1 + zeta))
    assert theory.generalized_elastic_zeta(best, zeta, m) == pytest.approx(low)
    grid = np.linspace(1e-4, 2 / (m + 1) - 1e-4, 500)
    assert min(theory.generalized_elastic_zeta(a, zeta, m) for a in grid) >= low - 1e-12
    if zeta > 0:
        assert low < zeta


def test_generalized_elastic_zeta_eq_25_by_hand() -> None:
    # (1 - 0.1) * 0.8 = 0.72 against |1 - 9 * 0.1| = 0.1.
    assert theory.generalized_elastic_zeta(0.1, 0.8, 8) == pytest.approx(0.72)
    # (1 - 0.2) * 0.5 = 0.4 against |1 - 9 * 0.2| = 0.8.
    assert theory.generalized_elastic_zeta(0.2, 0.5, 8) == pytest.approx(0.8)


# --- Overlap-Local-SGD -------------------------------------------------------------------------


def test_overlap_bound_eq_11_by_hand() -> None:
    # L=1, F gap=2, sigma2=0.5, kappa2=0.1, m=4, K=4000, tau=2, alpha=0.5; sqrt(mK) = sqrt(16000).
    root = math.sqrt(16000)
    expected = (
        4 * 1 * 2 / (0.5 * root)
        + 2 * 0.5 * 0.5 / root
        + 2 * 4 * 0.5 / 4000 * (2 / (1.5 * 0.5) * 2 - 1)
        + 2 * 4 * 2**2 * 0.1 / (0.5**2 * 4000)
    )
    assert expected == pytest.approx(0.1379773, rel=1e-6)
    assert theory.overlap_bound(1.0, 2.0, 0.5, 0.1, 4, 4000, 2, 0.5) == pytest.approx(expected)


def test_overlap_bound_refuses_too_few_iterations() -> None:
    # 60 m tau^2/alpha^2 = 60 * 4 * 4/0.25 = 3840.
    assert theory.overlap_bound(1.0, 2.0, 0.5, 0.1, 4, 3840, 2, 0.5) > 0
    with pytest.raises(ConfigError, match=r"K=3839 is invalid.*K >= .*= 3840\.0"):
        theory.overlap_bound(1.0, 2.0, 0.5, 0.1, 4, 3839, 2, 0.5)


def test_overlap_zeta_bound() -> None:
    assert theory.overlap_zeta_bound(0.3) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="alpha="):
        theory.overlap_zeta_bound(1.0)


@pytest.mark.parametrize(
    ("t_comm", "t_step", "tau"),
    [(0.0, 1.0, 1), (0.5, 1.0, 1), (1.0, 1.0, 1), (2.5, 1.0, 3), (3.0, 1.0, 3), (1.1, 0.1, 11)],
)
def test_min_tau_to_hide(t_comm: float, t_step: float, tau: int) -> None:
    assert theory.min_tau_to_hide(t_comm, t_step) == tau


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False),
    st.floats(1e-3, 10.0, allow_nan=False, allow_infinity=False),
)
def test_min_tau_to_hide_is_the_smallest(t_comm: float, t_step: float) -> None:
    tau = theory.min_tau_to_hide(t_comm, t_step)
    assert tau >= 1
    assert tau * t_step >= t_comm
    assert tau == 1 or (tau - 1) * t_step < t_comm


# --- argument checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda: theory.error_floor(0.1, 0.0, 1.0, 4, 1, 0.5), "L="),
        (lambda: theory.error_floor(0.1, 1.0, -1.0, 4, 1, 0.5), "sigma2="),
        (lambda: theory.error_floor(0.1, 1.0, 1.0, 4, 1, 1.0), "zeta="),
        (lambda: theory.error_floor(0.1, 1.0, 1.0, 4, 1, -0.1), "zeta="),
        (lambda: theory.error_floor(0.1, 1.0, 1.0, 4, 0, 0.5), "tau="),
        (lambda: theory.error_floor(0.1, 1.0, 1.0, 4, 1.5, 0.5), "tau="),
        (lambda: theory.error_floor(0.1, 1.0, 1.0, 0, 1, 0.5), "m="),
        (lambda: theory.error_floor(0.1, 1.0, 1.0, 4, 1, 0.5, v=-1), "v="),
        (lambda: theory.error_floor(float("nan"), 1.0, 1.0, 4, 1, 0.5), "eta="),
        (lambda: theory.error_floor(True, 1.0, 1.0, 4, 1, 0.5), "eta="),
        (lambda: theory.error_bound(0.1, 1.0, 1.0, 4, 1, 0.5, 0, 1.0), "K="),
        (lambda: theory.error_bound(0.1, 1.0, 1.0, 4, 1, 0.5, 10, -1.0), "f_gap="),
        (lambda: theory.max_learning_rate(1.0, 4, 1, 1.0), "zeta="),
        (lambda: theory.zeta_tau(0), "tau="),
        (lambda: theory.generalized_elastic_zeta(0.1, 1.5, 8), "zeta="),
        (lambda: theory.overlap_bound(1.0, 1.0, 1.0, -0.1, 4, 10**6, 1, 0.5), "kappa2="),
        (lambda: theory.overlap_bound(1.0, 1.0, 1.0, 0.1, 4, 10**6, 1, 1.0), "alpha="),
        (lambda: theory.min_tau_to_hide(1.0, 0.0), "t_step="),
        (lambda: theory.min_tau_to_hide(-1.0, 1.0), "t_comm="),
    ],
)
def test_bad_arguments_name_the_parameter(call, parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value).startswith(parameter)
