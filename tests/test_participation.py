"""W over the workers that answered: each re-weighting keeps what its algorithms need."""

from __future__ import annotations

import numpy as np
import pytest

from fedcoop import mixing, participation, topology
from tests.conftest import spec_of

SURVIVOR_SETS = [frozenset({0, 1, 2, 4}), frozenset({3}), frozenset({0, 5}), frozenset(range(5))]
ALGORITHMS = ["local-sgd", "fedavg", "easgd", "dpsgd", "generalized-elastic", "hierarchical"]
#: workers on the ring of the D-PSGD tests
RING = 6


@pytest.mark.parametrize("algorithm", [*ALGORITHMS, "overlap", "cocod"])
@pytest.mark.parametrize("survivors", SURVIVOR_SETS, ids=str)
def test_every_column_still_averages_and_nothing_missing_is_read(
    algorithm: str, survivors: frozenset[int]
) -> None:
    spec = spec_of(algorithm)
    m = spec.num_workers
    w = participation.round_matrix(spec.w, m, survivors, spec.reweight)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    for j in set(range(m)) - survivors:  # a missing worker's model feeds no other column
        assert np.count_nonzero(np.delete(w[j], j)) == 0


@pytest.mark.parametrize("algorithm", ["easgd", "dpsgd", "generalized-elastic", "hierarchical"])
@pytest.mark.parametrize("survivors", SURVIVOR_SETS, ids=str)
def test_symmetric_rules_stay_symmetric_and_doubly_stochastic_on_the_survivors(
    algorithm: str, survivors: frozenset[int]
) -> None:
    spec = spec_of(algorithm)
    m = spec.num_workers
    keep = [*sorted(survivors), *range(m, m + spec.num_aux)]
    w = participation.round_matrix(spec.w, m, survivors, spec.reweight)[np.ix_(keep, keep)]
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


def test_star_rules_average_over_those_that_answered() -> None:
    m, survivors = 6, frozenset({1, 2, 5})
    w = participation.round_matrix(mixing.averaging(m), m, survivors, participation.renormalize)
    expected = np.zeros(m)
    expected[sorted(survivors)] = 1 / 3
    for i in range(m):  # survivors average, the others adopt the same average
        np.testing.assert_allclose(w[:, i], expected, atol=1e-15)
    fedavg = spec_of("fedavg")
    counts = np.array([1.0, 2, 3, 4, 5, 6])
    w = np.outer(counts / counts.sum(), np.ones(m))
    w_s = participation.round_matrix(w, m, survivors, fedavg.reweight)
    np.testing.assert_allclose(w_s[[1, 2, 5], 0], counts[[1, 2, 5]] / 11, atol=1e-15)


def test_easgd_on_the_survivors_is_easgd_of_fewer_workers() -> None:
    m, alpha = 6, 0.1
    survivors = frozenset({0, 2, 3})
    w = participation.round_matrix(mixing.easgd(m, alpha), m, survivors, participation.keep_self)
    smaller = mixing.easgd(3, alpha)
    keep = [0, 2, 3, m]
    np.testing.assert_allclose(w[np.ix_(keep, keep)], smaller, atol=1e-15)


def ring_round(survivors: frozenset[int]) -> np.ndarray:
    """D-PSGD's W on the ring 0-1-2-3-4-5-0 for a round that only `survivors` answered."""
    spec = spec_of("dpsgd", RING)
    return participation.round_matrix(spec.w, RING, survivors, spec.reweight)


def ring_parts(survivors: frozenset[int]) -> int:
    """How many parts the ring's survivors mix in."""
    spec = spec_of("dpsgd", RING)
    mix = participation.round_mix(spec.w, RING, survivors, spec.reweight)
    return participation.components(mix)


def test_dpsgd_reweighs_the_surviving_ring_with_metropolis_hastings() -> None:
    survivors = frozenset({0, 1, 2, 3})  # the ring loses 4 and 5: a path
    w = ring_round(survivors)
    path = np.zeros((4, 4), dtype=bool)
    for a, b in [(0, 1), (1, 2), (2, 3)]:
        path[a, b] = path[b, a] = True
    np.testing.assert_allclose(w[:4, :4], topology.metropolis_hastings(path), atol=1e-15)
    assert ring_parts(survivors) == 1


def test_a_split_surviving_graph_mixes_in_parts() -> None:
    survivors = frozenset({0, 1, 3, 4})  # ring without 2 and 5: parts {0, 1} and {3, 4}
    w = ring_round(survivors)
    assert ring_parts(survivors) == 2
    np.testing.assert_allclose(w[np.ix_([0, 1], [0, 1])], np.full((2, 2), 0.5), atol=1e-15)
    assert w[0, 3] == w[3, 0] == 0.0


@pytest.mark.parametrize(
    ("survivors", "worker", "adopts"),
    [
        ({0, 1, 2, 3}, 4, 3),  # its surviving neighbour 3's model
        ({2, 3}, 0, 0),  # neighbours 5 and 1 are missing: the identity
        ({2, 3}, 1, 2),  # neighbour 2 answered
    ],
)
def test_a_worker_that_missed_the_sync_adopts_a_surviving_neighbour_or_keeps_its_model(
    survivors: set[int], worker: int, adopts: int
) -> None:
    w = ring_round(frozenset(survivors))
    np.testing.assert_allclose(w[:, worker], np.eye(RING)[adopts], atol=1e-15)


def test_full_participation_is_w_itself() -> None:
    spec = spec_of("overlap")
    w = participation.round_matrix(spec.w, 6, frozenset(range(6)), spec.reweight)
    np.testing.assert_array_equal(w, spec.w)


def test_sampling_is_seeded_and_the_share_asked_for() -> None:
    draws = [participation.sample(7, r, 10, 0.3) for r in range(1, 50)]
    assert all(len(d) == 3 for d in draws)
    assert len(set(draws)) > 10
    assert participation.sample(7, 5, 10, 0.3) == draws[4]
    assert participation.sample(7, 5, 10, 1.0) == frozenset(range(10))
    assert len(participation.sample(0, 1, 10, 0.01)) == 1


def test_workers_that_miss_a_sync_form_one_group_per_column_over_the_present_nodes() -> None:
    """FedAvg over 2,000 workers with 3 answering: the 1,997 others share one column (the
    survivors' average), read from the present rows of W alone."""
    m, survivors = 2000, frozenset({4, 700, 1999})
    counts = np.arange(1.0, m + 1)
    w = np.broadcast_to((counts / counts.sum())[:, None], (m, m))  # W = p 1^T, held once
    mix = participation.round_mix(w, m, survivors, participation.renormalize)
    assert mix.alive == [4, 700, 1999] and mix.block.shape == (3, 3)
    ((workers, column),) = mix.groups
    np.testing.assert_array_equal(workers, sorted(set(range(m)) - survivors))
    np.testing.assert_allclose(column, counts[[4, 700, 1999]] / counts[[4, 700, 1999]].sum())
    np.testing.assert_allclose(mix.block, np.repeat(column[:, None], 3, axis=1), atol=1e-15)


def test_a_ring_round_groups_missing_workers_by_the_neighbours_they_adopt() -> None:
    spec = spec_of("dpsgd", RING)
    mix = participation.round_mix(spec.w, RING, frozenset({2, 3}), spec.reweight)
    groups = {tuple(workers.tolist()): column for workers, column in mix.groups}
    # present nodes are [2, 3]: 1 adopts 2, 4 adopts 3, 0 and 5 read neither and keep theirs
    assert set(groups) == {(0, 5), (1,), (4,)}
    assert groups[0, 5] is None
    np.testing.assert_array_equal(groups[1,], [1.0, 0.0])
    np.testing.assert_array_equal(groups[4,], [0.0, 1.0])
