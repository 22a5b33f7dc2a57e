"""The named algorithms: which A(tau, W, v) each config resolves to, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcoop import algorithms, mixing, topology
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from fedcoop.optimizers import SGD, LocalOptimizer, Momentum, Proximal, WeightDecay, sgd
from fedcoop.spec import ClientRule, UpdateRule


def config(**changes: object) -> RunConfig:
    return RunConfig.from_mapping(changes)


@pytest.mark.parametrize("name", [n for n in algorithms.ALGORITHMS if n != "cooperative"])
def test_every_named_algorithm_resolves_with_the_defaults(name: str) -> None:
    spec = algorithms.resolve(config(algorithm=name))
    m = RunConfig().num_clients
    assert spec.num_workers == m
    assert spec.w.shape == (m + spec.num_aux, m + spec.num_aux)
    np.testing.assert_allclose(spec.w.sum(axis=0), 1.0, atol=1e-12)


def test_cooperative_without_a_matrix_file_says_so() -> None:
    with pytest.raises(ConfigError, match="needs a matrix file") as err:
        algorithms.resolve(config(algorithm="cooperative"))
    assert err.value.parameter == "matrix-file"


def test_cooperative_with_a_missing_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(ConfigError, match="no such file") as err:
        algorithms.resolve(config(algorithm="cooperative", matrix_file=str(missing)))
    assert err.value.parameter == "matrix-file" and str(missing) in str(err.value)


def user_matrix() -> np.ndarray:
    """A star's MH weights with an elastic anchor: 5 workers, 1 auxiliary node."""
    return mixing.generalized_elastic(topology.weigh("metropolis-hastings", topology.star(5)))


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_cooperative_reads_the_matrix_file(tmp_path: Path, suffix: str) -> None:
    w = user_matrix()
    path = tmp_path / f"w{suffix}"
    if suffix == ".npy":
        np.save(path, w)
    elif suffix == ".csv":
        np.savetxt(path, w, delimiter=",")
    else:
        np.savetxt(path, w)
    spec = algorithms.resolve(
        config(algorithm="cooperative", matrix_file=str(path), num_aux=1, num_clients=5, tau=3)
    )
    np.testing.assert_allclose(spec.w, w, rtol=0, atol=1e-15)
    assert (spec.num_workers, spec.num_aux, spec.tau) == (5, 1, 3)
    assert spec.symmetric
    assert spec.rule is UpdateRule.MIX_AFTER_STEP


def test_cooperative_with_a_non_symmetric_matrix_checks_columns_only(tmp_path: Path) -> None:
    path = tmp_path / "p.npy"
    np.save(path, mixing.overlap(4, 0.5))
    spec = algorithms.resolve(
        config(algorithm="cooperative", matrix_file=str(path), num_aux=1, num_clients=4)
    )
    assert not spec.symmetric


def test_cooperative_matrix_size_must_match_num_clients(tmp_path: Path) -> None:
    path = tmp_path / "w.npy"
    np.save(path, user_matrix())
    with pytest.raises(ConfigError) as err:
        algorithms.resolve(
            config(algorithm="cooperative", matrix_file=str(path), num_aux=1, num_clients=8)
        )
    assert err.value.parameter == "num-clients"
    assert "5 worker columns" in str(err.value)


@pytest.mark.filterwarnings("ignore:loadtxt. input contained no data")
@pytest.mark.parametrize(
    ("content", "suffix"),
    [
        ("0.5,0.5,0.0\n0.5,0.5,1.0\n", ".csv"),  # not square
        ("0.5,half\nhalf,0.5\n", ".csv"),  # not numbers
        ("", ".csv"),  # empty
        ("not a numpy file", ".npy"),
    ],
)
def test_cooperative_with_an_unreadable_matrix_is_a_config_error(
    tmp_path: Path, content: str, suffix: str
) -> None:
    path = tmp_path / f"w{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        algorithms.resolve(
            config(algorithm="cooperative", matrix_file=str(path), num_aux=1, num_clients=2)
        )
    assert err.value.parameter in {"matrix-file", "W"}


@pytest.mark.parametrize("w", [np.array([["a", "b"], ["c", "d"]]), np.array([0.5, 0.5])])
def test_cooperative_with_a_npy_that_is_no_matrix_is_a_config_error(
    tmp_path: Path, w: np.ndarray
) -> None:
    path = tmp_path / "w.npy"
    np.save(path, w)
    with pytest.raises(ConfigError) as err:
        algorithms.resolve(config(algorithm="cooperative", matrix_file=str(path), num_clients=2))
    assert err.value.parameter in {"matrix-file", "W"}


# --- the spec of each named algorithm ---------------------------------------------------


@pytest.mark.parametrize("m", [1, 4])
def test_sync_is_tau_1_with_full_averaging(m: int) -> None:
    spec = algorithms.resolve(config(algorithm="sync", num_clients=m, tau=5))
    assert spec.tau == 1 and spec.num_aux == 0
    np.testing.assert_array_equal(spec.w, np.full((m, m), 1 / m))


def test_local_sgd_is_tau_with_full_averaging() -> None:
    spec = algorithms.resolve(config(algorithm="local-sgd", num_clients=4, tau=5))
    assert spec.tau == 5 and spec.num_aux == 0
    assert spec.rule is UpdateRule.MIX_AFTER_STEP and spec.client_rule is ClientRule.MIX
    np.testing.assert_array_equal(spec.w, np.full((4, 4), 0.25))


@pytest.mark.parametrize("name", ["easgd", "eamsgd"])
def test_easgd_uses_w_alpha_with_lemma_1_alpha_and_remark_1(name: str) -> None:
    m = 6
    spec = algorithms.resolve(config(algorithm=name, num_clients=m, tau=2))
    alpha = 2 / (m + 2)
    np.testing.assert_allclose(spec.w, mixing.easgd(m, alpha), rtol=0, atol=1e-15)
    assert spec.w[m, 0] == pytest.approx(alpha)
    assert spec.w[m, m] == pytest.approx(1 - m * alpha)
    assert spec.num_aux == 1 and spec.tau == 2
    assert spec.rule is UpdateRule.MIX_BEFORE_STEP
    assert spec.anchor_momentum == 0.0


def test_easgd_takes_an_explicit_alpha() -> None:
    spec = algorithms.resolve(config(algorithm="easgd", num_clients=4, alpha=0.1))
    np.testing.assert_allclose(spec.w, mixing.easgd(4, 0.1))


def test_easgd_alpha_at_the_limit_is_refused_with_the_limit_in_the_message() -> None:
    with pytest.raises(ConfigError) as err:
        algorithms.resolve(config(algorithm="easgd", num_clients=8, alpha=2 / 9))
    message = str(err.value)
    assert "alpha" in message and "0.222" in message
    with pytest.raises(ConfigError, match=r"0\.222"):
        algorithms.resolve(config(algorithm="easgd", num_clients=8, alpha=0.3))


def test_dpsgd_uses_the_topology_metropolis_hastings_weights() -> None:
    spec = algorithms.resolve(config(algorithm="dpsgd", num_clients=6, tau=1))
    np.testing.assert_array_equal(spec.w, topology.weigh("metropolis-hastings", topology.ring(6)))
    assert spec.num_aux == 0 and spec.rule is UpdateRule.MIX_BEFORE_STEP
    # a ring: each worker's column reads exactly its two neighbours
    assert set(spec.incoming(0)) == {1, 5}


def test_dpsgd_follows_topology_and_weighting() -> None:
    spec = algorithms.resolve(
        config(algorithm="dpsgd", num_clients=8, topology="hypercube", weighting="max-degree")
    )
    np.testing.assert_array_equal(spec.w, topology.max_degree(topology.hypercube(8)))


def test_overlap_uses_p_with_the_paper_defaults() -> None:
    m = 5
    spec = algorithms.resolve(config(algorithm="overlap", num_clients=m, tau=2))
    assert algorithms.OVERLAP_ALPHA == 0.6 and algorithms.OVERLAP_BETA == 0.7
    np.testing.assert_array_equal(spec.w, mixing.overlap(m, 0.6))
    assert spec.anchor_momentum == 0.7
    assert spec.num_aux == 1 and spec.rule is UpdateRule.MIX_AFTER_STEP
    assert not spec.symmetric


def test_overlap_takes_alpha_and_anchor_momentum() -> None:
    spec = algorithms.resolve(
        config(algorithm="overlap", num_clients=3, alpha=0.2, anchor_momentum=0)
    )
    np.testing.assert_array_equal(spec.w, mixing.overlap(3, 0.2))
    assert spec.anchor_momentum == 0.0


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_hierarchical_has_one_auxiliary_node_per_group(groups: int) -> None:
    spec = algorithms.resolve(config(algorithm="hierarchical", num_clients=6, groups=groups))
    assert spec.num_aux == groups and spec.num_workers == 6
    np.testing.assert_allclose(spec.w, mixing.hierarchical(mixing.even_groups(6, groups)))


def test_hierarchical_with_more_groups_than_workers_is_refused() -> None:
    with pytest.raises(ConfigError, match="groups"):
        algorithms.resolve(config(algorithm="hierarchical", num_clients=3, groups=4))


def test_generalized_elastic_adds_one_anchor_to_the_graph() -> None:
    spec = algorithms.resolve(config(algorithm="generalized-elastic", num_clients=6))
    ring = topology.weigh("metropolis-hastings", topology.ring(6))
    np.testing.assert_allclose(spec.w, mixing.generalized_elastic(ring))
    assert spec.num_aux == 1


def test_fedavg_weighs_workers_by_their_sample_counts() -> None:
    counts = [10, 20, 30, 40]
    spec = algorithms.resolve(config(algorithm="fedavg", num_clients=4, tau=3), counts)
    p = np.array(counts) / sum(counts)
    for column in spec.w.T:
        np.testing.assert_allclose(column, p, rtol=0, atol=1e-15)
    assert spec.tau == 3 and spec.num_aux == 0


def test_fedavg_without_counts_is_plain_averaging_and_refuses_bad_counts() -> None:
    spec = algorithms.resolve(config(algorithm="fedavg", num_clients=3))
    np.testing.assert_allclose(spec.w, np.full((3, 3), 1 / 3))
    with pytest.raises(ConfigError, match="sample counts"):
        algorithms.resolve(config(algorithm="fedavg", num_clients=3), [1, 0, 2])
    with pytest.raises(ConfigError, match="sample counts"):
        algorithms.resolve(config(algorithm="fedavg", num_clients=3), [1, 2])


def test_cocod_routes_the_stale_mean_with_the_correction_rule() -> None:
    m = 4
    spec = algorithms.resolve(config(algorithm="cocod", num_clients=m))
    assert spec.client_rule is ClientRule.CORRECTION and spec.num_aux == 1
    np.testing.assert_array_equal(spec.w, algorithms.cocod_routing(m))
    assert spec.incoming(0) == {m: 1.0} and spec.self_weight(0) == 0.0
    assert spec.incoming(m) == {i: 1 / m for i in range(m)}


# --- overrides and their errors ---------------------------------------------------------


def test_update_rule_override() -> None:
    before = algorithms.resolve(config(algorithm="local-sgd", update_rule="mix-before-step"))
    assert before.rule is UpdateRule.MIX_BEFORE_STEP
    after = algorithms.resolve(config(algorithm="easgd", update_rule="mix-after-step"))
    assert after.rule is UpdateRule.MIX_AFTER_STEP


def test_update_rule_override_is_refused_for_cocod() -> None:
    with pytest.raises(ConfigError, match="cocod") as err:
        algorithms.resolve(config(algorithm="cocod", update_rule="mix-after-step"))
    assert err.value.parameter == "update-rule"


def test_unknown_update_rule_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        algorithms.resolve(config(update_rule="sideways"))
    assert err.value.parameter == "update-rule"
    for rule in ("auto", "mix-after-step", "mix-before-step"):
        assert rule in str(err.value)


@pytest.mark.parametrize("name", ["local-sgd", "dpsgd", "sync", "cocod"])
def test_anchor_momentum_without_an_anchor_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="no anchor") as err:
        algorithms.resolve(config(algorithm=name, anchor_momentum=0.5))
    assert err.value.parameter == "anchor-momentum"
    # zero is harmless and accepted
    assert algorithms.resolve(config(algorithm=name, anchor_momentum=0)).anchor_momentum == 0


def test_anchor_momentum_on_other_anchors_is_applied() -> None:
    spec = algorithms.resolve(config(algorithm="easgd", num_clients=4, anchor_momentum=0.3))
    assert spec.anchor_momentum == 0.3
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        algorithms.resolve(config(algorithm="overlap", anchor_momentum=1))


def test_unknown_algorithm_lists_the_names() -> None:
    with pytest.raises(ConfigError) as err:
        algorithms.resolve(config(algorithm="scaffolding"))
    assert err.value.parameter == "algorithm"
    for name in algorithms.ALGORITHMS:
        assert name in str(err.value)


def test_local_optimizer() -> None:
    assert algorithms.local_optimizer(config(algorithm="eamsgd")) == sgd(0.9, nesterov=True)
    assert algorithms.local_optimizer(config(algorithm="eamsgd", momentum=0.5)) == sgd(0.5)
    assert algorithms.local_optimizer(
        config(algorithm="eamsgd", momentum=0.5, nesterov=True)
    ) == sgd(0.5, nesterov=True)
    assert algorithms.local_optimizer(config(algorithm="easgd")) == SGD
    assert algorithms.local_optimizer(config(algorithm="fedprox")) == LocalOptimizer(
        terms=(Proximal(algorithms.FEDPROX_MU),)
    )
    assert algorithms.local_optimizer(config(algorithm="fedprox", prox_mu=0.5)) == sgd(prox_mu=0.5)
    assert algorithms.local_optimizer(config(algorithm="dpsgd", prox_mu=0.5)) == sgd(prox_mu=0.5)
    assert algorithms.local_optimizer(
        config(algorithm="overlap", momentum=0.9, nesterov=True, weight_decay=1e-4)
    ) == LocalOptimizer(terms=(WeightDecay(1e-4),), transforms=(Momentum(0.9, nesterov=True),))
