"""Graph builders and weightings: shapes, degrees, connectivity, doubly stochastic W."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoop import topology
from fedcoop.errors import ConfigError
from fedcoop.mixing import zeta


def assert_simple_connected(a: np.ndarray, n: int) -> None:
    assert a.shape == (n, n)
    assert a.dtype == bool
    assert np.array_equal(a, a.T)
    assert not a.diagonal().any()
    assert nx.is_connected(nx.from_numpy_array(a.astype(int)))


def degrees(a: np.ndarray) -> np.ndarray:
    return a.sum(axis=1)


def test_complete() -> None:
    a = topology.complete(6)
    assert_simple_connected(a, 6)
    assert (degrees(a) == 5).all()


@pytest.mark.parametrize("n", [3, 4, 7, 20])
def test_ring_has_degree_two_and_links_neighbours(n: int) -> None:
    a = topology.ring(n)
    assert_simple_connected(a, n)
    assert (degrees(a) == 2).all()
    for i in range(n):
        assert a[i, (i + 1) % n] and a[i, (i - 1) % n]


def test_ring_of_two_is_one_edge() -> None:
    assert np.array_equal(topology.ring(2), np.array([[False, True], [True, False]]))


@pytest.mark.parametrize(("rows", "cols"), [(3, 3), (3, 4), (4, 5)])
def test_torus_has_degree_four_with_wraparound(rows: int, cols: int) -> None:
    a = topology.torus(rows, cols)
    n = rows * cols
    assert_simple_connected(a, n)
    assert (degrees(a) == 4).all()
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            assert a[i, r * cols + (c + 1) % cols]
            assert a[i, ((r + 1) % rows) * cols + c]


def test_star_hub_is_node_zero() -> None:
    a = topology.star(7)
    assert_simple_connected(a, 7)
    assert degrees(a)[0] == 6
    assert (degrees(a)[1:] == 1).all()
    assert not a[1:, 1:].any()


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_hypercube_links_labels_one_bit_apart(n: int) -> None:
    a = topology.hypercube(n)
    assert_simple_connected(a, n)
    assert (degrees(a) == int(np.log2(n))).all()
    for i in range(n):
        for j in range(n):
            assert a[i, j] == (bin(i ^ j).count("1") == 1)


@pytest.mark.parametrize(("n", "degree"), [(2, 1), (3, 2), (8, 5), (16, 7), (6, 4), (12, 6)])
def test_exponential_degrees(n: int, degree: int) -> None:
    # n=6: offsets 1, 2, 4 and 4 = -2 (mod 6); n=12: offsets 1, 2, 4, 8 and 8 = -4 (mod 12).
    a = topology.exponential(n)
    assert_simple_connected(a, n)
    assert (degrees(a) == degree).all()
    for k in range(int(np.log2(n - 1)) + 1):
        assert a[0, 2**k % n] and a[0, -(2**k) % n]


@pytest.mark.parametrize(
    "call",
    [
        lambda: topology.complete(1),
        lambda: topology.ring(1),
        lambda: topology.star(0),
        lambda: topology.hypercube(6),
        lambda: topology.hypercube(1),
        lambda: topology.exponential(2.0),
        lambda: topology.torus(1, 1),
        lambda: topology.torus(0, 4),
        lambda: topology.erdos_renyi(10, 0.0, 0),
        lambda: topology.erdos_renyi(10, 1.5, 0),
        lambda: topology.erdos_renyi(10, 0.5, -1),
        lambda: topology.random_geometric(10, 0.0, 0),
    ],
)
def test_invalid_parameters_are_refused(call) -> None:
    with pytest.raises(ConfigError):
        call()


def test_size_error_names_n() -> None:
    with pytest.raises(ConfigError, match=r"n=1 is invalid.*>= 2"):
        topology.ring(1)
    with pytest.raises(ConfigError, match=r"n=12 is invalid.*power of 2"):
        topology.hypercube(12)


@pytest.mark.parametrize(
    ("make", "n"),
    [
        (lambda s: topology.erdos_renyi(20, 0.2, s), 20),
        (lambda s: topology.random_geometric(30, 0.3, s), 30),
    ],
)
def test_seeded_random_graphs_are_reproducible_and_connected(make, n: int) -> None:
    first, again, other = make(3), make(3), make(4)
    assert_simple_connected(first, n)
    assert_simple_connected(other, n)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_first_draw_matches_networkx_with_the_same_seed() -> None:
    expected = nx.to_numpy_array(nx.gnp_random_graph(12, 0.6, seed=7), dtype=bool)
    assert nx.is_connected(nx.from_numpy_array(expected.astype(int)))
    assert np.array_equal(topology.erdos_renyi(12, 0.6, 7), expected)


def test_disconnected_draw_is_redrawn() -> None:
    n, p = 20, 0.12
    seed = next(s for s in range(200) if not nx.is_connected(nx.gnp_random_graph(n, p, seed=s)))
    a = topology.erdos_renyi(n, p, seed)
    assert_simple_connected(a, n)
    assert np.array_equal(a, topology.erdos_renyi(n, p, seed))


def test_hopeless_random_graph_says_which_parameter_to_raise() -> None:
    with pytest.raises(ConfigError, match=r"p=0.01 is invalid.*disconnected.*raise p"):
        topology.erdos_renyi(30, 0.01, 0)
    with pytest.raises(ConfigError, match=r"radius=0.01 is invalid.*raise radius"):
        topology.random_geometric(30, 0.01, 0)


def test_from_adjacency_accepts_a_valid_graph() -> None:
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    out = topology.from_adjacency(a)
    assert out.dtype == bool
    assert np.array_equal(out, a.astype(bool))


@pytest.mark.parametrize(
    ("a", "fragment"),
    [
        (np.zeros((2, 3)), "square"),
        (np.zeros((1, 1)), "n >= 2"),
        (np.array([[0, 2], [2, 0]]), "0 or 1"),
        (np.array([[0, np.nan], [np.nan, 0]]), "0 or 1"),
        (np.array([[1, 1], [1, 0]]), "self loops"),
        (np.array([[0, 1, 1], [0, 0, 1], [1, 1, 0]]), "symmetric"),
        (
            np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]),
            "2 connected components",
        ),
        (np.array([["a", "b"], ["c", "d"]]), "0/1"),
    ],
)
def test_from_adjacency_refuses(a: np.ndarray, fragment: str) -> None:
    with pytest.raises(ConfigError, match="adjacency") as info:
        topology.from_adjacency(a)
    assert fragment in str(info.value)


def test_build_maps_every_name() -> None:
    expected = {
        "complete": topology.complete(16),
        "ring": topology.ring(16),
        "torus": topology.torus(4, 4),
        "star": topology.star(16),
        "hypercube": topology.hypercube(16),
        "exponential": topology.exponential(16),
        "erdos-renyi": topology.erdos_renyi(16, 0.5, 0),
        "random-geometric": topology.random_geometric(16, 0.5, 0),
    }
    assert set(expected) == set(topology.TOPOLOGIES)
    for name, a in expected.items():
        assert np.array_equal(topology.build(name, 16), a), name


def test_build_passes_random_graph_parameters() -> None:
    assert np.array_equal(
        topology.build("erdos-renyi", 20, seed=5, p=0.3), topology.erdos_renyi(20, 0.3, 5)
    )
    assert np.array_equal(
        topology.build("random-geometric", 20, seed=5, radius=0.4),
        topology.random_geometric(20, 0.4, 5),
    )


def test_build_torus_picks_the_squarest_split() -> None:
    assert np.array_equal(topology.build("torus", 12), topology.torus(3, 4))
    assert np.array_equal(topology.build("torus", 12, rows=2), topology.torus(2, 6))
    assert np.array_equal(topology.build("torus", 7, rows=1), topology.ring(7))
    with pytest.raises(ConfigError, match=r"n=7 is invalid.*rows"):
        topology.build("torus", 7)
    with pytest.raises(ConfigError, match=r"rows=5 is invalid.*divide n=12"):
        topology.build("torus", 12, rows=5)


def test_build_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="topology='mesh'") as info:
        topology.build("mesh", 8)
    for name in topology.TOPOLOGIES:
        assert name in str(info.value)


def test_weigh_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="weighting='uniform'") as info:
        topology.weigh("uniform", topology.ring(4))
    for name in topology.WEIGHTINGS:
        assert name in str(info.value)


def assert_doubly_stochastic(w: np.ndarray) -> None:
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", topology.TOPOLOGIES)
@pytest.mark.parametrize("weighting", topology.WEIGHTINGS)
def test_every_weighting_of_every_topology_mixes(name: str, weighting: str) -> None:
    a = topology.build(name, 16)
    w = topology.weigh(weighting, a)
    assert_doubly_stochastic(w)
    assert zeta(w) < 1 - 1e-6
    off_diagonal = ~np.eye(16, dtype=bool)
    # Weight flows only along links of the graph.
    assert np.all(w[off_diagonal & ~a] == 0)
    if weighting != "laplacian":
        assert (w >= 0).all()
        assert np.all(w[a] > 0)


def test_metropolis_hastings_values_on_a_path() -> None:
    # Path 0-1-2-3: degrees 1, 2, 2, 1, so every edge weight is 1/(1+2).
    a = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    w = topology.metropolis_hastings(a)
    third = 1 / 3
    expected = np.array(
        [
            [1 - third, third, 0, 0],
            [third, third, third, 0],
            [0, third, third, third],
            [0, 0, third, 1 - third],
        ]
    )
    np.testing.assert_allclose(w, expected)


def test_max_degree_values_on_a_star() -> None:
    w = topology.max_degree(topology.star(4))
    np.testing.assert_allclose(w[0], [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(w.diagonal()[1:], 0.75)


def test_laplacian_on_complete_graph_is_full_averaging() -> None:
    np.testing.assert_allclose(
        topology.laplacian_optimal(topology.complete(5)), np.full((5, 5), 0.2)
    )


@pytest.mark.parametrize("n", [5, 8, 11, 16])
def test_laplacian_optimal_mixes_at_least_as_fast_as_constant_weights(n: int) -> None:
    a = topology.ring(n)
    best = zeta(topology.laplacian_optimal(a))
    assert best <= zeta(topology.max_degree(a)) + 1e-12
    assert best <= zeta(topology.metropolis_hastings(a)) + 1e-12
    # It is the best W = I - s L over the step size s.
    lap = np.diag(degrees(a)) - a.astype(float)
    for s in np.linspace(0.01, 0.66, 60):
        assert best <= zeta(np.eye(n) - s * lap) + 1e-12


def test_weightings_refuse_a_disconnected_graph() -> None:
    a = np.zeros((4, 4), dtype=bool)
    a[0, 1] = a[1, 0] = a[2, 3] = a[3, 2] = True
    for name in topology.WEIGHTINGS:
        with pytest.raises(ConfigError, match="connected"):
            topology.weigh(name, a)


@st.composite
def connected_graphs(draw: st.DrawFn) -> np.ndarray:
    """A random spanning tree plus random extra edges: every connected graph can come out."""
    n = draw(st.integers(2, 12))
    a = np.zeros((n, n), dtype=bool)
    for i in range(1, n):
        j = draw(st.integers(0, i - 1))
        a[i, j] = a[j, i] = True
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in draw(st.lists(st.sampled_from(pairs), max_size=2 * n)):
        a[i, j] = a[j, i] = True
    return a


@settings(max_examples=60, deadline=None)
@given(connected_graphs(), st.sampled_from(topology.WEIGHTINGS))
def test_weightings_of_random_connected_graphs_mix(a: np.ndarray, weighting: str) -> None:
    w = topology.weigh(weighting, a)
    assert_doubly_stochastic(w)
    assert zeta(w) < 1 - 1e-9
    if weighting != "laplacian":
        assert (w >= 0).all()
