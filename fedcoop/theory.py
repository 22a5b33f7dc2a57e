"""The papers' convergence bounds as plain functions of floats.

Equation numbers without a prefix refer to Cooperative SGD (Wang & Joshi, 2018); "overlap"
refers to Overlap Local-SGD (Wang, Liang & Joshi, 2020). Keeping the bounds here, apart from
any training code, lets runs print what the theory predicts for their (tau, W, v) and lets
the tests pin each formula to the paper.

The argument checks at the top are shared with `fedcoop.mixing` and `fedcoop.topology`, so
that every bad number is refused with the same kind of message.
"""

from __future__ import annotations

import math

import numpy as np

from fedcoop.errors import ConfigError


def check_int(name: str, value: object, minimum: int, valid: str | None = None) -> int:
    """Return `value` as an int, refusing bools, floats and anything below `minimum`.

    Counts (clients, steps, iterations) silently truncated from 2.5 to 2 would hide a typo in
    a config, so only genuine integers pass.
    """
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not is_int or value < minimum:
        raise ConfigError(name, value, valid or f"{name} must be an integer >= {minimum}")
    return int(value)


def check_real(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    valid: str | None = None,
) -> float:
    """Return `value` as a float if it is finite and inside the given bounds.

    NaN compares false with everything, so it is refused explicitly rather than slipping
    through every bound check.
    """
    is_real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    x = float(value) if is_real else math.nan
    ok = (
        math.isfinite(x)
        and (above is None or x > above)
        and (at_least is None or x >= at_least)
        and (below is None or x < below)
        and (at_most is None or x <= at_most)
    )
    if not ok:
        if valid is None:
            low = f"{above:g} < " if above is not None else ""
            low = f"{at_least:g} <= " if at_least is not None else low
            high = f" < {below:g}" if below is not None else ""
            high = f" <= {at_most:g}" if at_most is not None else high
            valid = f"{name} must be a finite number with {low}{name}{high}"
        raise ConfigError(name, value, valid)
    return x


def _zeta(value: float, *, allow_one: bool = False) -> float:
    """Theorem 1 needs zeta < 1; Lemma 2 also accepts a non-mixing W (zeta = 1)."""
    if allow_one:
        return check_real("zeta", value, at_least=0.0, at_most=1.0)
    return check_real(
        "zeta",
        value,
        at_least=0.0,
        below=1.0,
        valid="zeta must satisfy 0 <= zeta < 1 (zeta = 1 means W does not mix)",
    )


def _workers(m: int, v: int) -> tuple[int, int]:
    """m >= 1 workers and v >= 0 auxiliary nodes, the sizes every bound depends on."""
    return check_int("m", m, 1), check_int("v", v, 0)


def effective_lr(eta: float, m: int, v: int = 0) -> float:
    """eta_eff = m/(m+v) eta (eq. 13): auxiliary nodes take no gradient steps, so the average
    model moves more slowly than each worker."""
    m, v = _workers(m, v)
    return m / (m + v) * check_real("eta", eta, above=0.0)


def _network_factor(tau: int, zeta: float) -> float:
    """(1+zeta^2)/(1-zeta^2) tau - 1, the factor shared by eqs. (17), (18) and overlap (11)."""
    return (1 + zeta**2) / (1 - zeta**2) * tau - 1


def error_floor(
    eta: float, L: float, sigma2: float, m: int, tau: int, zeta: float, v: int = 0
) -> float:
    """Error floor at K -> infinity, eq. (18): the fully synchronous term plus the network error.

    Valid only for an eta satisfying eq. (16) (see `lr_condition`); the formula itself is
    returned for any eta so that it can be plotted over tau and zeta as in Figure 2.
    """
    eta_eff = effective_lr(eta, m, v)
    L = check_real("L", L, above=0.0)
    sigma2 = check_real("sigma2", sigma2, at_least=0.0)
    tau = check_int("tau", tau, 1)
    zeta = _zeta(zeta)
    sync = eta_eff * L * sigma2 / m
    network = eta_eff**2 * L**2 * sigma2 * _network_factor(tau, zeta) * (1 + v / m) ** 2
    return sync + network


def error_bound(
    eta: float,
    L: float,
    sigma2: float,
    m: int,
    tau: int,
    zeta: float,
    K: int,
    f_gap: float,
    v: int = 0,
) -> float:
    """Bound on the average squared gradient norm after K iterations, eq. (17).

    f_gap = F(u_1) - F_inf. Theorem 1 assumes tau divides K and eta satisfies eq. (16).
    """
    K = check_int("K", K, 1)
    f_gap = check_real("f_gap", f_gap, at_least=0.0)
    floor = error_floor(eta, L, sigma2, m, tau, zeta, v)
    return 2 * f_gap / (effective_lr(eta, m, v) * K) + floor


def lr_condition(eta: float, L: float, m: int, tau: int, zeta: float, v: int = 0) -> float:
    """Left side of eq. (16); Theorem 1 holds when this is <= 1."""
    eta_eff = effective_lr(eta, m, v)
    L = check_real("L", L, above=0.0)
    tau = check_int("tau", tau, 1)
    zeta = _zeta(zeta)
    spread = (1 + v / m) * tau / (1 - zeta)
    return eta_eff * L + 5 * eta_eff**2 * L**2 * spread**2


def max_learning_rate(L: float, m: int, tau: int, zeta: float, v: int = 0) -> float:
    """Largest eta with eq. (16) holding with equality.

    With x = eta_eff L and c = 5 [(1+v/m) tau/(1-zeta)]^2, (16) reads x + c x^2 = 1, whose
    positive root 2/(1 + sqrt(1+4c)) is written so that it does not cancel for large c.
    """
    m, v = _workers(m, v)
    L = check_real("L", L, above=0.0)
    tau = check_int("tau", tau, 1)
    zeta = _zeta(zeta)
    c = 5 * ((1 + v / m) * tau / (1 - zeta)) ** 2
    x = 2 / (1 + math.sqrt(1 + 4 * c))
    return x / L * (m + v) / m


def easgd_alpha_limit(m: int) -> float:
    """2/(m+1): EASGD's W_alpha has zeta < 1 only for 0 < alpha below this (section 5.1)."""
    return 2 / (check_int("m", m, 1) + 1)


def check_elastic_alpha(alpha: float, m: int, algorithm: str) -> float:
    """Refuse an elasticity outside 0 < alpha < 2/(m+1).

    Eq. (20) and eq. (25) both contain |1 - (m+1) alpha|, so EASGD and generalized elastic
    averaging stop mixing at the same limit.
    """
    limit = easgd_alpha_limit(m)
    return check_real(
        "alpha",
        alpha,
        above=0.0,
        below=limit,
        valid=f"{algorithm} needs 0 < alpha < 2/(m+1) = {limit:.4f} for m={m}",
    )


def easgd_zeta(alpha: float, m: int) -> float:
    """zeta of EASGD's W_alpha, eq. (20): max(|1 - alpha|, |1 - (m+1) alpha|)."""
    alpha = check_elastic_alpha(alpha, m, "EASGD")
    return max(abs(1 - alpha), abs(1 - (m + 1) * alpha))


def easgd_best_alpha(m: int) -> float:
    """alpha = 2/(m+2) minimises eq. (20), giving zeta = m/(m+2) (Lemma 1)."""
    return 2 / (check_int("m", m, 1) + 2)


def generalized_elastic_zeta(alpha: float, zeta: float, m: int) -> float:
    """zeta' of W' (eq. 23), eq. (25): max((1 - alpha) zeta, |1 - (m+1) alpha|).

    zeta = 1 is accepted: the auxiliary node alone connects the workers.
    """
    alpha = check_elastic_alpha(alpha, m, "generalized elastic averaging")
    zeta = _zeta(zeta, allow_one=True)
    return max((1 - alpha) * zeta, abs(1 - (m + 1) * alpha))


def generalized_elastic_best_alpha(zeta: float, m: int) -> float:
    """alpha = (1+zeta)/(m+1+zeta) balances both terms of eq. (25) (Lemma 2)."""
    zeta = _zeta(zeta, allow_one=True)
    return (1 + zeta) / (check_int("m", m, 1) + 1 + zeta)


def generalized_elastic_min_zeta(zeta: float, m: int) -> float:
    """The minimum of eq. (25), m zeta/(m+1+zeta), reached at the best alpha (Lemma 2)."""
    zeta = _zeta(zeta, allow_one=True)
    m = check_int("m", m, 1)
    return m * zeta / (m + 1 + zeta)


def zeta_tau(tau: int) -> float:
    """Eq. (22): the zeta at which D-PSGD A(1, W, 0) has the same error floor as PASGD
    A(tau, J, 0); a W with smaller zeta beats periodic averaging with this tau."""
    tau = check_int("tau", tau, 1)
    return math.sqrt(1 - 2 / (tau + 1))


def overlap_bound(
    L: float,
    f_gap: float,
    sigma2: float,
    kappa2: float,
    m: int,
    K: int,
    tau: int,
    alpha: float,
) -> float:
    """Overlap-Local-SGD's bound, overlap eq. (11), for gamma = sqrt(m/K)/L.

    kappa2 bounds the spread of the local gradients (non-IID data). The theorem only holds
    for K >= 60 m tau^2/alpha^2, so a smaller K is refused rather than given a false bound.
    """
    L = check_real("L", L, above=0.0)
    f_gap = check_real("f_gap", f_gap, at_least=0.0)
    sigma2 = check_real("sigma2", sigma2, at_least=0.0)
    kappa2 = check_real("kappa2", kappa2, at_least=0.0)
    m = check_int("m", m, 1)
    K = check_int("K", K, 1)
    tau = check_int("tau", tau, 1)
    alpha = check_real("alpha", alpha, above=0.0, below=1.0)
    k_min = 60 * m * tau**2 / alpha**2
    if k_min > K:
        raise ConfigError(
            "K",
            K,
            f"Overlap-Local-SGD's Theorem 1 needs K >= 60 m tau^2/alpha^2 = {k_min:.1f} "
            f"for m={m}, tau={tau}, alpha={alpha:g}",
        )
    root = math.sqrt(m * K)
    return (
        4 * L * f_gap / ((1 - alpha) * root)
        + 2 * (1 - alpha) * sigma2 / root
        + 2 * m * sigma2 / K * (2 / ((2 - alpha) * alpha) * tau - 1)
        + 2 * m * tau**2 * kappa2 / (alpha**2 * K)
    )


def overlap_zeta_bound(alpha: float) -> float:
    """||P - v 1^T||_2 <= 1 - alpha for the overlap matrix P (overlap appendix A)."""
    return 1 - check_real("alpha", alpha, above=0.0, below=1.0)


def min_tau_to_hide(t_comm: float, t_step: float) -> int:
    """Smallest tau >= 1 with tau t_step >= t_comm, so the anchor's averaging finishes within
    one round of local steps (overlap, constant step time case under eq. 10).

    The ceiling of the float ratio can land one off (1.1/0.1 = 11.000000000000002), so it is
    corrected against the defining inequality itself.
    """
    t_comm = check_real("t_comm", t_comm, at_least=0.0)
    t_step = check_real("t_step", t_step, above=0.0)
    tau = max(1, math.ceil(t_comm / t_step))
    while tau > 1 and (tau - 1) * t_step >= t_comm:
        tau -= 1
    while tau * t_step < t_comm:
        tau += 1
    return tau
