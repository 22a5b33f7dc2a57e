"""The heart of the engine: the Flower path equals the papers' matrix rule.

Every algorithm runs through the real strategy and the real ClientApp exchanging Messages
(delivered in a shuffled order by InProcessGrid, so replies arrive out of order; or all
waiting train messages as one batch of the local rule by the vectorized engine) on
per-client least squares with full-batch gradients. The workers' and auxiliary nodes' final
models must equal `reference_trajectory` - the dense rule X_{k+1} = (X_k - eta G_k) W_k, its
Remark-1 form, the overlap paper's eq. (5)-(8) with anchor momentum, or CoCoD-SGD written
literally - to the float rule of two code paths (docs/testing.md#comparing-floats).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcoop import mixing, participation, topology
from fedcoop.model_vectors import model_vector
from simulations.runner import GRIDS
from strategies.server_app import initial_model
from tests.conftest import (
    assert_follows_rule,
    assert_replayed,
    least_squares_config,
    reference_final,
    run_in_process,
)

pytestmark = [pytest.mark.cross_path, pytest.mark.flower]

CASES = {
    "sync": dict(algorithm="sync"),
    "local-sgd": dict(algorithm="local-sgd"),
    "local-sgd-momentum-wd": dict(
        algorithm="local-sgd", momentum=0.9, nesterov=True, weight_decay=0.01
    ),
    "fedavg": dict(algorithm="fedavg"),
    "easgd": dict(algorithm="easgd", tau=1),
    "easgd-periodic": dict(algorithm="easgd", tau=2, alpha=0.1),
    "eamsgd": dict(algorithm="eamsgd", tau=2),
    "dpsgd-ring": dict(algorithm="dpsgd", tau=1, num_clients=6),
    "dpsgd-periodic-torus": dict(algorithm="dpsgd", tau=3, num_clients=6, topology="torus"),
    "dpsgd-mix-after-step": dict(
        algorithm="dpsgd",
        tau=2,
        topology="exponential",
        num_clients=8,
        update_rule="mix-after-step",
        weighting="max-degree",
    ),
    "dpsgd-laplacian": dict(algorithm="dpsgd", tau=1, weighting="laplacian", topology="ring"),
    "generalized-elastic": dict(algorithm="generalized-elastic", tau=1, num_clients=6),
    "hierarchical": dict(algorithm="hierarchical", tau=2, num_clients=6, groups=2),
    "overlap": dict(algorithm="overlap", tau=2),
    "overlap-tau1-momentum": dict(algorithm="overlap", tau=1, momentum=0.9, nesterov=True),
    "cocod": dict(algorithm="cocod", tau=2),
}
#: Partial participation: round r is trained by the seeded sample of the workers; the sync
#: re-weights W over them (fedcoop.participation) and the others adopt the survivors' mix.
PARTIAL = {
    "local-sgd": dict(algorithm="local-sgd", num_rounds=6),
    "fedavg-momentum": dict(algorithm="fedavg", num_rounds=6, momentum=0.9),
    "easgd": dict(algorithm="easgd", tau=2, num_rounds=6),
    "dpsgd-ring": dict(algorithm="dpsgd", tau=1, num_clients=6, num_rounds=8),
    "generalized-elastic": dict(algorithm="generalized-elastic", tau=2, num_clients=6),
    "hierarchical": dict(algorithm="hierarchical", tau=2, num_clients=6, groups=2),
    "overlap": dict(algorithm="overlap", tau=2, num_rounds=6),
}


@pytest.mark.parametrize("engine", list(GRIDS))
@pytest.mark.parametrize("case", list(CASES))
def test_flower_path_equals_matrix_rule(case: str, engine: str) -> None:
    config = least_squares_config(**CASES[case])
    result, grid = run_in_process(config, engine=engine)
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)
    assert grid.overlapping_messages == 0
    # the problem is not trivial: training moved every worker well away from x_0
    x0 = model_vector(initial_model(config)).double().numpy()
    assert np.abs(result.workers - x0).max(axis=1).min() > 1e-2
    assert len(result.rounds) == config.num_rounds


@pytest.mark.parametrize("engine", list(GRIDS))
@pytest.mark.parametrize("case", list(PARTIAL))
def test_partial_participation_equals_the_reweighted_matrix_rule(case: str, engine: str) -> None:
    config = least_squares_config(**PARTIAL[case], participation=0.6, seed=3)
    result, grid = run_in_process(config, engine=engine)
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)
    assert grid.overlapping_messages == 0
    m = result.spec.num_workers
    sizes = [row["participants"] for row in result.rounds]
    assert sizes == [round(0.6 * m)] * config.num_rounds
    # the sample changes from round to round, so workers missed syncs and adopted
    samples = {participation.sample(3, r, m, 0.6) for r in range(1, config.num_rounds + 1)}
    assert len(samples) > 1


@pytest.mark.parametrize("engine", list(GRIDS))
def test_cooperative_takes_any_matrix_from_a_file(tmp_path, engine: str) -> None:
    """The generic strategy: a user's W (a star with an anchor, via Lemma 2) from a .csv."""
    w = mixing.generalized_elastic(topology.weigh("metropolis-hastings", topology.star(5)))
    path = tmp_path / "w.csv"
    np.savetxt(path, w, delimiter=",")
    config = least_squares_config(
        algorithm="cooperative", matrix_file=str(path), num_aux=1, num_clients=5, tau=2
    )
    result, _ = run_in_process(config, engine=engine)
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)


def test_delivery_order_does_not_change_the_result() -> None:
    """Pipelined overlap: different arrival orders, the same models to the last bit."""
    config = least_squares_config(algorithm="overlap", tau=2)
    first, _ = run_in_process(config, seed=1)
    second, _ = run_in_process(config, seed=2)
    assert_replayed(first.workers, second.workers)


def test_periodic_averaging_leaves_workers_identical() -> None:
    """With J every worker holds the same model after every sync (design note check)."""
    result, _ = run_in_process(least_squares_config(algorithm="local-sgd"))
    assert result.workers is not None
    np.testing.assert_allclose(result.workers, result.workers[[0]].repeat(5, axis=0), atol=1e-12)
