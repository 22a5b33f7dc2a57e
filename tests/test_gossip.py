"""Gossip schedules (fedcoop.gossip): random matching, random edge and a user's W_r sequence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcoop import gossip, matcha, topology
from fedcoop.errors import ConfigError
from tests.conftest import named_key
from tests.test_matcha import (
    assert_symmetric_doubly_stochastic,
    connected_graphs,
    graph_edges,
)

RING8 = topology.ring(8)
CUBE8 = topology.hypercube(8)


@settings(max_examples=20, deadline=None)
@given(connected_graphs(max_nodes=9), st.integers(0, 2**32), st.integers(1, 10**6))
def test_one_pairing_per_round(adj: np.ndarray, seed: int, round_: int) -> None:
    m = adj.shape[0]
    for schedule in (gossip.RandomMatching(adj, seed), gossip.RandomEdge(adj, seed)):
        w = schedule.matrix(round_)
        assert_symmetric_doubly_stochastic(w)
        assert np.all(w >= 0.0)
        edges = schedule.edges(round_)
        assert np.allclose(w, np.eye(m) - matcha.laplacian(m, edges) / 2)
        # Each matched pair averages: both hold (x_a + x_b) / 2; the others keep their own.
        for a, b in edges:
            assert w[a, a] == w[b, b] == w[a, b] == w[b, a] == 0.5
        assert np.allclose(w @ w, w)  # a projection, which rho() relies on
        assert np.array_equal(schedule.matrix(round_), w)
    assert gossip.RandomMatching(adj, seed).edges(round_) in matcha.decompose(adj)
    (edge,) = gossip.RandomEdge(adj, seed).edges(round_)
    assert edge in graph_edges(adj)


@pytest.mark.parametrize("kind", [gossip.RandomMatching, gossip.RandomEdge])
def test_pairings_are_uniform_and_expected_is_exact(kind: type) -> None:
    """Choice frequencies over 20000 rounds within 5 standard errors of 1/K; E[W] exact
    against the mean of the K possible matrices and within 0.02 of the empirical mean."""
    schedule = kind(CUBE8, seed=5)
    k = len(schedule.pools)
    rounds = range(1, 20001)
    counts = np.bincount([schedule.choice(r) for r in rounds], minlength=k)
    spread = 5 * np.sqrt(20000 * (1 / k) * (1 - 1 / k))
    assert np.all(np.abs(counts - 20000 / k) < spread)
    pool_mean = np.mean([np.eye(8) - matcha.laplacian(8, p) / 2 for p in schedule.pools], axis=0)
    assert np.allclose(schedule.expected(), pool_mean)
    empirical = np.tensordot(
        counts / 20000, [np.eye(8) - matcha.laplacian(8, p) / 2 for p in schedule.pools], axes=1
    )
    assert np.abs(empirical - schedule.expected()).max() < 0.02
    # rho = 1 - lambda_2(L) / (2K), below 1 on a connected graph.
    lam2 = np.linalg.eigvalsh(matcha.laplacian(8, graph_edges(CUBE8)))[1]
    assert schedule.rho() == pytest.approx(1 - lam2 / (2 * k))
    assert schedule.rho() < 1.0


def test_random_matching_mixes_faster_than_random_edge() -> None:
    """Both draw one pairing a round, but a matching moves several pairs at once."""
    assert gossip.RandomMatching(RING8, 0).rho() < gossip.RandomEdge(RING8, 0).rho()
    assert len(gossip.RandomEdge(RING8, 0).pools) == 8
    assert len(gossip.RandomMatching(RING8, 0).pools) == 2


def test_gossip_rounds_reproducible_and_varying() -> None:
    a, b, other = (gossip.RandomEdge(CUBE8, s) for s in (3, 3, 4))
    assert [a.choice(r) for r in range(1, 60)] == [b.choice(r) for r in range(1, 60)]
    assert len({a.choice(r) for r in range(1, 60)}) > 3
    assert [a.choice(r) for r in range(1, 60)] != [other.choice(r) for r in range(1, 60)]
    # Gossip's draws are salted apart from MATCHA's on the same (seed, round).
    assert gossip.SALT != matcha.SALT


def test_gossip_refuses_graphs_that_cannot_mix() -> None:
    with pytest.raises(ConfigError) as err:
        gossip.RandomMatching(np.zeros((3, 3), dtype=bool), 0)
    assert err.value.parameter == "topology"
    with pytest.raises(ConfigError) as err:
        gossip.RandomEdge(RING8, 0).matrix(0)
    assert err.value.parameter == "round"


def ring_matchings(m: int) -> list[np.ndarray]:
    """Two gossip matrices on an even ring: each alone disconnected, together connected."""
    return [np.eye(m) - matcha.laplacian(m, p) / 2 for p in matcha.decompose(topology.ring(m))]


def test_npz_positional_arrays_run_in_natural_order(tmp_path: Path) -> None:
    """arr_10 comes after arr_9 (not after arr_1); round r uses W_{(r-1) mod K}."""
    base = ring_matchings(6)
    rng = np.random.default_rng(0)
    weights = rng.random(12)
    ws = [a * base[0] + (1 - a) * base[1] for a in weights]  # 12 distinct valid matrices
    np.savez(tmp_path / "s.npz", *ws)
    seq = gossip.MatrixSequence.load(tmp_path / "s.npz", 6)
    assert seq.num_workers == 6
    for r in range(1, 30):
        assert np.array_equal(seq.matrix(r), ws[(r - 1) % 12])
    assert np.allclose(seq.expected(), np.mean(ws, axis=0))
    assert set(seq.edges(1)) == {(int(a), int(b)) for a, b in np.argwhere(np.triu(ws[0] > 0, 1))}


def test_named_npz_arrays_and_folders_sorted_by_name(tmp_path: Path) -> None:
    first, second = ring_matchings(4)
    np.savez(tmp_path / "named.npz", w10=second, w2=first)
    seq = gossip.MatrixSequence.load(tmp_path / "named.npz", 4)
    assert np.array_equal(seq.matrix(1), first)
    assert np.array_equal(seq.matrix(2), second)
    folder = tmp_path / "seq"
    folder.mkdir()
    np.save(folder / "w10.npy", second)
    np.savetxt(folder / "w2.csv", first, delimiter=",")
    (folder / "notes.txt").write_text("not a matrix")
    seq = gossip.MatrixSequence.load(folder, 4)
    assert len(seq.matrices) == 2
    assert np.allclose(seq.matrix(1), first)
    assert np.allclose(seq.matrix(3), first)
    assert np.allclose(seq.matrix(2), second)
    # rho over the period: the mean of W^T W = W, minus J.
    assert seq.rho() == pytest.approx(gossip.RandomMatching(topology.ring(4), 0).rho())


def test_a_single_disconnected_round_is_fine_but_the_union_must_connect(tmp_path: Path) -> None:
    first, second = ring_matchings(6)
    np.savez(tmp_path / "ok.npz", first, second)
    assert len(gossip.MatrixSequence.load(tmp_path / "ok.npz", 6).matrices) == 2
    np.savez(tmp_path / "split.npz", first, first)
    with pytest.raises(ConfigError, match="3 groups of workers") as err:
        gossip.MatrixSequence.load(tmp_path / "split.npz", 6)
    assert err.value.parameter == "topology-schedule"


def broken(kind: str, m: int) -> np.ndarray:
    w = ring_matchings(m)[0]
    if kind == "shape":
        return np.eye(m + 1)
    if kind == "nan":
        w[0, 0] = np.nan
    elif kind == "column":
        w[0, 0] = 0.7
    elif kind == "asymmetric":
        w[:, 0] = [0.5, 0.0, 0.5, 0.0]  # columns still sum to 1, W != W^T
        w[:, 2] = [0.0, 0.0, 0.5, 0.5]
    elif kind == "strings":
        return np.array([["a"] * m] * m)
    return w


@pytest.mark.parametrize("kind", ["shape", "nan", "column", "asymmetric", "strings"])
def test_bad_matrices_name_the_key_and_the_array(tmp_path: Path, kind: str) -> None:
    good = ring_matchings(4)[1]
    np.savez(tmp_path / "s.npz", good, broken(kind, 4))
    with pytest.raises(ConfigError) as err:
        gossip.MatrixSequence.load(tmp_path / "s.npz", 4)
    assert named_key(err.value.parameter) == "topology-schedule"
    assert "s.npz:arr_1" in err.value.parameter
    if kind == "shape":
        assert "shape (5, 5)" in str(err.value)
        assert "num-clients=4" in str(err.value)


def test_wrong_num_clients_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", *ring_matchings(4))
    with pytest.raises(ConfigError, match=r"shape \(4, 4\).*\(6, 6\) for num-clients=6") as err:
        gossip.MatrixSequence.load(tmp_path / "s.npz", 6)
    assert named_key(err.value.parameter) == "topology-schedule"


@pytest.mark.parametrize("what", ["missing", "empty-folder", "npy-file", "garbage", "bad-csv"])
def test_unreadable_schedules_name_the_key(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x"
    if what == "empty-folder":
        path.mkdir()
    elif what == "npy-file":
        path = tmp_path / "x.npy"
        np.save(path, np.eye(4))
    elif what == "garbage":
        path.write_bytes(b"\x00\x01 not an archive")
    elif what == "bad-csv":
        path.mkdir()
        (path / "w1.csv").write_text("1,x\n0,1\n")
    with pytest.raises(ConfigError) as err:
        gossip.MatrixSequence.load(path, 4)
    assert err.value.parameter == "topology-schedule"


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(connected_graphs(max_nodes=7), st.integers(0, 1000), st.integers(1, 8))
def test_gossip_rounds_round_trip_through_a_file(
    tmp_path: Path, adj: np.ndarray, seed: int, rounds: int
) -> None:
    """Any run of gossip rounds whose links cover the graph saves and loads unchanged."""
    schedule = gossip.RandomMatching(adj, seed)
    pools = list(schedule.pools)
    ws = [np.eye(adj.shape[0]) - matcha.laplacian(adj.shape[0], p) / 2 for p in pools]
    ws += [schedule.matrix(r) for r in range(1, rounds + 1)]
    file = tmp_path / f"g{seed}-{rounds}.npz"
    np.savez(file, *ws)
    seq = gossip.MatrixSequence.load(file, adj.shape[0])
    assert all(np.array_equal(a, b) for a, b in zip(seq.matrices, ws, strict=True))
