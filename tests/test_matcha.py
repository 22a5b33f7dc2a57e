"""MATCHA (fedcoop.matcha): the decomposition, the activation probabilities, alpha and rho, and
the per-round matrices, held to the paper's definitions and to Monte-Carlo averages."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoop import matcha, mixing, topology
from fedcoop.errors import ConfigError

NAMED_GRAPHS = {
    "ring16": topology.ring(16),
    "ring7": topology.ring(7),
    "hypercube16": topology.hypercube(16),
    "complete7": topology.complete(7),
    "torus16": topology.build("torus", 16),
    "exponential16": topology.exponential(16),
    "erdos-renyi12": topology.erdos_renyi(12, 0.35, 2),
    "star6": topology.star(6),
}


@st.composite
def connected_graphs(draw: st.DrawFn, max_nodes: int = 10) -> np.ndarray:
    """A random spanning tree plus random extra links: connected by construction."""
    n = draw(st.integers(2, max_nodes))
    adj = np.zeros((n, n), dtype=bool)
    for i in range(1, n):
        j = draw(st.integers(0, i - 1))
        adj[i, j] = adj[j, i] = True
    for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)))):
        if a != b:
            adj[a, b] = adj[b, a] = True
    return adj


def graph_edges(adj: np.ndarray) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in np.argwhere(np.triu(adj))]


def assert_edge_colouring(adj: np.ndarray, matchings: tuple) -> None:
    """Every edge in exactly one class, each class a matching, at most Delta + 1 classes."""
    used = [e for matching in matchings for e in matching]
    assert sorted(used) == graph_edges(adj)
    assert len(used) == len(set(used))
    for matching in matchings:
        assert matching
        nodes = [x for e in matching for x in e]
        assert len(nodes) == len(set(nodes)), matching
    assert len(matchings) <= adj.sum(axis=1).max() + 1


def assert_symmetric_doubly_stochastic(w: np.ndarray) -> None:
    assert np.allclose(w, w.T, atol=1e-12)
    assert np.allclose(w.sum(axis=0), 1.0, atol=1e-12)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(NAMED_GRAPHS))
def test_decomposition_is_an_edge_colouring(name: str) -> None:
    adj = NAMED_GRAPHS[name]
    matchings = matcha.decompose(adj)
    assert_edge_colouring(adj, matchings)
    assert matcha.decompose(adj) == matchings  # deterministic


@pytest.mark.parametrize("name", ["ring16", "hypercube16", "torus16", "complete7", "star6"])
def test_decomposition_finds_delta_matchings_where_they_exist(name: str) -> None:
    """Even rings, hypercubes and tori have Delta-colourings (as do stars, and K_7 needs
    Delta + 1 = 7): Misra & Gries alone gives Delta + 1 on the first three."""
    adj = NAMED_GRAPHS[name]
    delta = int(adj.sum(axis=1).max())
    expected = delta + 1 if name == "complete7" else delta
    assert len(matcha.decompose(adj)) == expected


@settings(max_examples=60, deadline=None)
@given(connected_graphs(max_nodes=12))
def test_misra_gries_is_a_proper_delta_plus_one_colouring(adj: np.ndarray) -> None:
    colours = matcha._misra_gries(adj.shape[0], graph_edges(adj))
    assert sorted(colours) == graph_edges(adj)
    assert max(colours.values()) <= adj.sum(axis=1).max()  # colours 0..Delta
    for x in range(adj.shape[0]):
        at_x = [c for e, c in colours.items() if x in e]
        assert len(at_x) == len(set(at_x)), f"two edges at node {x} share a colour"


@settings(max_examples=40, deadline=None)
@given(connected_graphs())
def test_decompose_on_random_graphs(adj: np.ndarray) -> None:
    assert_edge_colouring(adj, matcha.decompose(adj))


def test_a_matchings_laplacian_squares_to_twice_itself() -> None:
    """L_j^2 = 2 L_j, which E[W^T W]'s closed form relies on; a non-matching breaks it."""
    for adj in NAMED_GRAPHS.values():
        for matching in matcha.decompose(adj):
            lap = matcha.laplacian(adj.shape[0], matching)
            assert np.allclose(lap @ lap, 2 * lap)
    path = matcha.laplacian(3, [(0, 1), (1, 2)])
    assert not np.allclose(path @ path, 2 * path)


@pytest.mark.parametrize("name", ["ring16", "hypercube16", "erdos-renyi12"])
def test_full_budget_is_d_psgd_with_the_best_laplacian_weight(name: str) -> None:
    adj = NAMED_GRAPHS[name]
    schedule = matcha.Matcha.build(adj, 1.0, seed=3)
    assert schedule.probabilities == (1.0,) * len(schedule.matchings)
    lap = matcha.laplacian(adj.shape[0], graph_edges(adj))
    values = np.linalg.eigvalsh(lap)
    assert schedule.alpha == pytest.approx(2 / (values[1] + values[-1]), rel=1e-8)
    w = np.eye(adj.shape[0]) - schedule.alpha * lap
    for r in range(1, 20):
        assert np.allclose(schedule.matrix(r), w, atol=1e-12)
    assert np.allclose(schedule.expected(), w, atol=1e-12)
    # No randomness left: rho = ||W^2 - J|| = zeta(W)^2 of the optimal Laplacian weighting.
    zeta = mixing.zeta(topology.laplacian_optimal(adj))
    assert schedule.rho() == pytest.approx(zeta**2, rel=1e-7)


@settings(max_examples=15, deadline=None)
@given(connected_graphs(max_nodes=9), st.floats(0.05, 1.0))
def test_probabilities_respect_the_budget(adj: np.ndarray, budget: float) -> None:
    schedule = matcha.Matcha.build(adj, budget, seed=0)
    p = np.asarray(schedule.probabilities)
    assert np.all(p >= 0.0)
    assert np.all(p <= 1.0)
    assert p.sum() <= budget * len(schedule.matchings) + 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probabilities_beat_random_feasible_points(seed: int) -> None:
    """Step 2 maximises lambda_2: no feasible point drawn at random does better."""
    adj = topology.erdos_renyi(12, 0.35, seed)
    laps = [matcha.laplacian(12, m) for m in matcha.decompose(adj)]
    rng = np.random.default_rng(seed)
    for budget in (0.2, 0.5, 0.8):
        ours = matcha.algebraic_connectivity(laps, matcha.activation_probabilities(laps, budget))
        uniform = matcha.algebraic_connectivity(laps, np.full(len(laps), budget))
        assert ours >= uniform - 1e-12
        for _ in range(300):
            q = matcha._onto_capped_simplex(rng.random(len(laps)) * 2 * budget, budget * len(laps))
            assert ours >= matcha.algebraic_connectivity(laps, q) - 1e-9


def test_connectivity_grows_with_the_budget() -> None:
    adj = NAMED_GRAPHS["erdos-renyi12"]
    laps = [matcha.laplacian(12, m) for m in matcha.decompose(adj)]
    budgets = np.linspace(0.1, 1.0, 7)
    values = [
        matcha.algebraic_connectivity(laps, matcha.activation_probabilities(laps, b))
        for b in budgets
    ]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(values))


def test_expectations_match_a_monte_carlo_average() -> None:
    """E[W] and the closed form of E[W^T W] against 20000 rounds; each entry's standard error
    is below 0.5/sqrt(20000) = 0.0035, so 0.02 is over 5 standard errors."""
    adj = topology.erdos_renyi(8, 0.5, 4)
    schedule = matcha.Matcha.build(adj, 0.4, seed=11)
    assert any(0.0 < p < 1.0 for p in schedule.probabilities)  # rounds really are random
    draws = [schedule.matrix(r) for r in range(1, 20001)]
    mean = np.mean(draws, axis=0)
    square = np.mean([w.T @ w for w in draws], axis=0)
    laps = schedule._laplacians()
    p = np.asarray(schedule.probabilities)
    assert np.abs(mean - schedule.expected()).max() < 0.02
    assert np.abs(square - matcha.second_moment(laps, p, schedule.alpha)).max() < 0.02
    # The activation frequencies themselves.
    counts = np.zeros(len(p))
    for r in range(1, 20001):
        counts[list(schedule.active(r))] += 1
    assert np.abs(counts / 20000 - p).max() < 0.02


@settings(max_examples=15, deadline=None)
@given(
    connected_graphs(max_nodes=8),
    st.floats(0.1, 1.0),
    st.integers(0, 2**32),
    st.integers(1, 10**6),
)
def test_every_round_is_symmetric_doubly_stochastic(
    adj: np.ndarray, budget: float, seed: int, round_: int
) -> None:
    schedule = matcha.Matcha.build(adj, budget, seed)
    w = schedule.matrix(round_)
    assert_symmetric_doubly_stochastic(w)
    # Off the diagonal, W_r weighs exactly the links of the round's active matchings.
    links = {(int(a), int(b)) for a, b in np.argwhere(np.triu(np.abs(w) > 0, k=1))}
    assert links == set(schedule.edges(round_))
    active = [schedule.matchings[j] for j in schedule.active(round_)]
    assert sorted(e for m in active for e in m) == list(schedule.edges(round_))


def test_rounds_are_reproducible_and_vary() -> None:
    adj = NAMED_GRAPHS["hypercube16"]
    a = matcha.Matcha.build(adj, 0.5, seed=7)
    b = matcha.Matcha.build(adj, 0.5, seed=7)
    other = matcha.Matcha.build(adj, 0.5, seed=8)
    assert a == b
    for r in (1, 2, 50):
        assert np.array_equal(a.matrix(r), b.matrix(r))
        assert np.array_equal(a.matrix(r), a.matrix(r))
    patterns = {a.active(r) for r in range(1, 41)}
    assert len(patterns) > 5
    assert [a.active(r) for r in range(1, 41)] != [other.active(r) for r in range(1, 41)]


def test_alpha_minimises_rho() -> None:
    schedule = matcha.Matcha.build(NAMED_GRAPHS["erdos-renyi12"], 0.4, seed=0)
    laps, p = schedule._laplacians(), np.asarray(schedule.probabilities)

    def rho(alpha: float) -> float:
        return matcha.spectral_norm(matcha.second_moment(laps, p, alpha))

    assert schedule.rho() == pytest.approx(rho(schedule.alpha))
    for alpha in np.linspace(0.0, 2 * schedule.alpha, 41):
        assert rho(alpha) >= schedule.rho() - 1e-9
    assert rho(0.0) == pytest.approx(1.0)


# rho measured at budgets 0.1, 0.2, ..., 1.0 (uniform p by symmetry on both graphs).
RING16_RHO = [0.9916, 0.9813, 0.9684, 0.9524, 0.9356, 0.9191, 0.9029, 0.8875, 0.8727, 0.8587]
HYPERCUBE16_RHO = [0.9, 0.8, 0.7025, 0.6213, 0.5556, 0.5017, 0.4571, 0.4195, 0.3875, 0.36]


@pytest.mark.parametrize(
    ("name", "figures"), [("ring16", RING16_RHO), ("hypercube16", HYPERCUBE16_RHO)]
)
def test_rho_below_one_and_falling_with_the_budget(name: str, figures: list[float]) -> None:
    budgets = [k / 10 for k in range(1, 11)]
    rhos = [matcha.Matcha.build(NAMED_GRAPHS[name], b, seed=0).rho() for b in budgets]
    assert rhos == pytest.approx(figures, abs=1e-4)
    assert all(r < 1.0 for r in rhos)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(rhos))


def test_half_the_budget_keeps_most_of_the_mixing_on_a_hypercube() -> None:
    """The paper's point: at C_b = 0.5 two rounds cost one full round's exchanges, and on
    the hypercube they mix better in mean square (rho^2 = 25/81 < 0.36). Not on the ring:
    its two matchings are both needed, and two half rounds mix worse than one full round."""
    cube = NAMED_GRAPHS["hypercube16"]
    half, full = (matcha.Matcha.build(cube, b, 0).rho() for b in (0.5, 1.0))
    assert half == pytest.approx(5 / 9, abs=1e-6)
    assert full == pytest.approx(0.36, abs=1e-6)
    assert half**2 < full
    ring = NAMED_GRAPHS["ring16"]
    half, full = (matcha.Matcha.build(ring, b, 0).rho() for b in (0.5, 1.0))
    assert half**2 > full


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, math.nan, math.inf, True, "0.5"])
def test_bad_budgets_name_comm_budget(budget: object) -> None:
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\]") as err:
        matcha.Matcha.build(NAMED_GRAPHS["ring7"], budget, seed=0)  # type: ignore[arg-type]
    assert err.value.parameter == "comm-budget"


@pytest.mark.parametrize(
    "adj",
    [
        np.zeros((4, 4), dtype=bool),
        nx.to_numpy_array(nx.Graph([(0, 1), (2, 3)]), nodelist=range(4), dtype=bool),
        np.ones((3, 3), dtype=bool),  # self loops
    ],
)
def test_graphs_without_mixing_name_topology(adj: np.ndarray) -> None:
    with pytest.raises(ConfigError) as err:
        matcha.Matcha.build(adj, 0.5, seed=0)
    assert err.value.parameter == "topology"


def test_rounds_count_from_one() -> None:
    schedule = matcha.Matcha.build(NAMED_GRAPHS["ring7"], 0.5, seed=0)
    with pytest.raises(ConfigError) as err:
        schedule.matrix(0)
    assert err.value.parameter == "round"
