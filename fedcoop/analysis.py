"""What the papers predict for a run config, before any training.

Resolves the config to its A(tau, W, v) and evaluates the theory on it: the mixing rate zeta,
Theorem 1's error floor and learning-rate condition (for the symmetric matrices it covers),
the best alpha of Lemma 1 / Lemma 2, the PASGD-vs-D-PSGD threshold zeta_tau, and the smallest
tau that hides a given communication time behind local steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcoop import algorithms, matcha, mixing, theory
from fedcoop.config import RunConfig


@dataclass(frozen=True)
class Finding:
    """One predicted quantity: its name, value and where it comes from."""

    name: str
    value: float
    source: str


def analyze(
    config: RunConfig,
    *,
    L: float = 1.0,
    sigma2: float = 1.0,
    t_comm: float | None = None,
    t_step: float | None = None,
) -> list[Finding]:
    """The theory's predictions for `config`; L and sigma2 are the smoothness constant and
    the gradient-noise variance the bounds are stated in (their units set the floor's)."""
    spec = algorithms.resolve(config)
    m, v, tau, w = spec.num_workers, spec.num_aux, spec.tau, spec.w
    out = [Finding("tau", tau, "local steps per round"), Finding("v", v, "auxiliary nodes")]
    if spec.check_spectrum:
        symmetric = mixing.is_symmetric(w)
        zeta = mixing.spectral_gap_zeta(w)
        out.append(
            Finding(
                "zeta",
                zeta,
                "of E[W_r]: W changes every round"
                if spec.w_schedule is not None
                else "max(|lambda_2|, |lambda_m+v|) of W (Assumption 5)"
                if symmetric
                else "||W - v 1^T||_2 (overlap paper, appendix A)",
            )
        )
        if symmetric and spec.w_schedule is None:  # Theorem 1 is for one fixed W
            eta = config.lr
            out += [
                Finding("eta_eff", theory.effective_lr(eta, m, v), "eq. (13): m/(m+v) eta"),
                Finding(
                    "error floor",
                    theory.error_floor(eta, L, sigma2, m, tau, zeta, v),
                    "eq. (18), with the given L and sigma^2",
                ),
                Finding(
                    "lr condition",
                    theory.lr_condition(eta, L, m, tau, zeta, v),
                    "left side of eq. (16); <= 1 is covered by Theorem 1",
                ),
                Finding(
                    "max lr", theory.max_learning_rate(L, m, tau, zeta, v), "eq. (16) with equality"
                ),
            ]
    out.append(
        Finding("zeta_tau", theory.zeta_tau(tau), "eq. (22): D-PSGD beats PASGD(tau) below it")
    )
    if config.algorithm in ("easgd", "eamsgd"):
        out += [
            Finding("best alpha", theory.easgd_best_alpha(m), "Lemma 1: 2/(m+2)"),
            Finding("alpha limit", theory.easgd_alpha_limit(m), "eq. (20): alpha < 2/(m+1)"),
        ]
    if config.algorithm == "generalized-elastic":
        base = mixing.zeta(algorithms.graph_matrix(config, m))
        out += [
            Finding("zeta of the graph", base, f"{config.topology}, {config.weighting}"),
            Finding("best alpha", theory.generalized_elastic_best_alpha(base, m), "Lemma 2"),
            Finding("best zeta'", theory.generalized_elastic_min_zeta(base, m), "Lemma 2"),
        ]
    if config.algorithm == "matcha":
        schedule = spec.w_schedule
        assert isinstance(schedule, matcha.Matcha)
        out += [
            Finding("matchings", len(schedule.matchings), f"of the {config.topology} graph"),
            Finding("alpha", schedule.alpha, "MATCHA: minimises rho"),
            Finding("rho", schedule.rho(), "MATCHA: ||E[W_r^T W_r] - J||_2"),
            Finding(
                "D-PSGD zeta",
                mixing.zeta(algorithms.graph_matrix(config, m)),
                f"the whole {config.topology} graph every round, {config.weighting}",
            ),
        ]
    if config.algorithm == "overlap":
        alpha = algorithms.OVERLAP_ALPHA if config.alpha == "auto" else float(config.alpha)
        out.append(
            Finding("zeta bound", theory.overlap_zeta_bound(alpha), "1 - alpha (appendix A)")
        )
    if t_comm is not None and t_step is not None:
        out.append(
            Finding(
                "tau to hide comm",
                theory.min_tau_to_hide(t_comm, t_step),
                f"overlap: tau * {t_step} s of steps >= {t_comm} s of communication",
            )
        )
    return out
