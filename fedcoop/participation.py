"""Who trains in a round, and the mixing matrix of a round that some workers missed.

A worker can miss a round because it was not sampled (partial participation), failed, was
late for the round deadline, or sent an update that was rejected. The sync of such a round
uses W_S, a matrix over the workers S that answered:

- Survivors' columns are re-weighted over S and the auxiliary nodes by the algorithm's
  `Reweight` rule: `renormalize` (each column's weights on the nodes that answered, scaled to
  sum 1: the star rules average over the clients that answered, sample-weighted for FedAvg,
  and Overlap-Local-SGD's anchor averages the answered models), `keep_self` (the weight of a
  missing node goes to the column's own diagonal: EASGD, hierarchical and generalized elastic
  anchors move only with those that answered, and a symmetric W stays symmetric and doubly
  stochastic) or `graph_reweight` (decentralized rules: the algorithm's weighting, e.g.
  Metropolis-Hastings, recomputed on the surviving subgraph, so W_S is symmetric and doubly
  stochastic; if the subgraph splits, each part mixes on its own that round).
- A worker that missed the sync adopts its column of W renormalized over the nodes that
  answered, without its own (stale or rejected) model: a star-rule worker takes the
  survivors' average, an anchored one the anchor, a decentralized one its surviving
  neighbours' average. With no surviving source its column is the identity. Rows of missing
  workers are zero off the diagonal, so nothing they did not report is ever read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from fedcoop import topology

#: (W over the present nodes, k) -> W_S over them: the block of W whose rows and columns are
#: the k surviving workers (in order) and then the auxiliary nodes (see module docstring)
Reweight = Callable[[np.ndarray, int], np.ndarray]


def sample(
    seed: int,
    round_: int,
    num_workers: int,
    fraction: float,
    available: Collection[int] | None = None,
) -> frozenset[int]:
    """The workers sampled to train round `round_`: round(fraction * m) of them (at least
    one), seeded by (seed, round) so every process and every resume draws the same; with
    `available` (devices that are away are not sampled), as many of those as there are."""
    if available is not None:
        pool = np.array(sorted(available), dtype=np.int64)
        k = min(len(pool), cohort_size(num_workers, fraction))
        rng = np.random.default_rng([seed, round_])
        return frozenset(int(i) for i in rng.choice(pool, size=k, replace=False))
    if fraction >= 1.0:
        return frozenset(range(num_workers))
    k = cohort_size(num_workers, fraction)
    rng = np.random.default_rng([seed, round_])
    return frozenset(int(i) for i in rng.choice(num_workers, size=k, replace=False))


def cohort_size(num_workers: int, fraction: float) -> int:
    """How many workers a round samples: round(fraction * m), at least one, at most m."""
    return num_workers if fraction >= 1.0 else max(1, round(fraction * num_workers))


def quorum_size(quorum: float, sampled: int) -> int:
    """How many of a round's `sampled` workers must answer for it to count: the share
    `quorum`, rounded up (a hair of float error forgiven), at least one."""
    return max(1, math.ceil(quorum * sampled - 1e-9))


def subset(seed: int, workers: Sequence[int], size: int) -> list[int]:
    """`size` of `workers` (all of them when size is 0 or at least their number), drawn
    seeded by `seed`, in order: which workers a run evaluates at its end."""
    if not size or size >= len(workers):
        return list(workers)
    rng = np.random.default_rng([seed, len(workers), size])
    return sorted(int(w) for w in rng.choice(workers, size=size, replace=False))


def renormalize(block: np.ndarray, k: int) -> np.ndarray:
    """Each present column's weights on present nodes, scaled to sum 1."""
    sums = block.sum(axis=0)
    return block / np.where(sums == 0.0, 1.0, sums)


def keep_self(block: np.ndarray, k: int) -> np.ndarray:
    """Each present column moves the weight of missing nodes onto its own diagonal."""
    w_s = block.copy()
    idx = np.arange(block.shape[0])
    w_s[idx, idx] += 1.0 - block.sum(axis=0)
    return w_s


def graph_reweight(weighting: str) -> Reweight:
    """Re-weigh the surviving subgraph of W's links with `weighting`, per connected part."""

    def reweight(block: np.ndarray, k: int) -> np.ndarray:
        w_s = np.eye(block.shape[0])
        links = (block[:k, :k] != 0) & ~np.eye(k, dtype=bool)
        graph = nx.from_numpy_array(links.astype(np.int8))
        for part in nx.connected_components(graph):
            nodes = sorted(part)
            if len(nodes) > 1:
                w_s[np.ix_(nodes, nodes)] = topology.weigh(weighting, links[np.ix_(nodes, nodes)])
        return w_s

    return reweight


@dataclass(frozen=True)
class RoundMix:
    """W_S of one round, held as what a sync reads, so that it costs the cohort, not m.

    Only the present nodes (the survivors, then the auxiliary nodes) have rows of W_S that
    are non-zero off the diagonal, so W_S is `block` (W_S over the present nodes) and, for
    the workers that missed the sync, their columns over the present nodes: workers with
    equal columns form one group, and a group's column is None when it reads no present node
    (the identity column: the worker keeps its model).
    """

    #: the surviving workers, in order; with the auxiliary nodes they index `block`'s rows
    alive: list[int]
    #: m and m + v
    num_workers: int
    num_nodes: int
    block: np.ndarray
    #: (workers, their column over the present nodes, or None) per group of missing workers
    groups: list[tuple[np.ndarray, np.ndarray | None]]

    @property
    def present(self) -> list[int]:
        """The node indices of `block`'s rows and columns: survivors, then auxiliary nodes."""
        return [*self.alive, *range(self.num_workers, self.num_nodes)]

    def dense(self) -> np.ndarray:
        """W_S as the (m + v) x (m + v) matrix (the reference rule's and tests' view)."""
        present = self.present
        w_s = np.eye(self.num_nodes)
        w_s[np.ix_(present, present)] = self.block
        for workers, column in self.groups:
            if column is not None:
                w_s[:, workers] = 0.0
                w_s[np.ix_(present, workers)] = column[:, None]
        return w_s


def round_mix(w: np.ndarray, m: int, survivors: frozenset[int], reweight: Reweight) -> RoundMix:
    """W_S: survivors' and auxiliary columns by `reweight`, missing workers adopting their
    column of W renormalized over the present nodes (module docstring). Reads the present
    rows of W only, O((|S| + v) m), never a copy of W."""
    alive = sorted(survivors)
    if len(alive) == m:  # W itself: no copy
        return RoundMix(alive, m, w.shape[0], np.asarray(w, dtype=np.float64), [])
    present = [*alive, *range(m, w.shape[0])]
    block = reweight(np.asarray(w[np.ix_(present, present)], dtype=np.float64), len(alive))
    out = np.ones(m, dtype=bool)
    out[alive] = False
    missing = np.flatnonzero(out)
    columns = np.asarray(w[np.ix_(present, missing)], dtype=np.float64)
    reads = columns.any(axis=0)
    groups: list[tuple[np.ndarray, np.ndarray | None]] = []
    if not reads.all():  # columns that read no present node: the identity
        groups.append((missing[~reads], None))
    columns, missing = columns[:, reads], missing[reads]
    for workers, column in _equal_columns(columns, missing):
        groups.append((workers, column / column.sum()))
    return RoundMix(alive, m, w.shape[0], block, groups)


def _equal_columns(columns: np.ndarray, workers: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """`workers` grouped by equal columns (worker k's is columns[:, k]): (members, column).

    Sorting m columns as rows (np.unique(axis=0)) takes tens of ms at m = 10,000 for the
    one group of a star rule, so columns are grouped by a fixed random projection, a sort
    of m numbers, and the grouping is then checked exactly (np.unique when a projection
    ever collides)."""
    if not workers.size:
        return []
    keys = np.random.default_rng(0).random(columns.shape[0]) @ columns
    if np.all(keys == keys[0]):  # one group (every star rule's)
        first, label = np.zeros(1, dtype=np.int64), np.zeros(len(keys), dtype=np.int64)
    else:
        _, first, label = np.unique(keys, return_index=True, return_inverse=True)
    if not np.array_equal(columns, columns[:, first[label]]):
        _, first, label = np.unique(columns.T, axis=0, return_index=True, return_inverse=True)
    label = label.ravel()
    order = np.argsort(label, kind="stable")
    members = np.split(workers[order], np.cumsum(np.bincount(label))[:-1])
    return [(group, columns[:, k]) for group, k in zip(members, first, strict=True)]


def round_matrix(
    w: np.ndarray, m: int, survivors: frozenset[int], reweight: Reweight
) -> np.ndarray:
    """W_S as a dense matrix (see `round_mix`)."""
    if len(survivors) == m:
        return np.asarray(w, dtype=np.float64)
    return round_mix(w, m, survivors, reweight).dense()


def components(mix: RoundMix) -> int:
    """How many separately mixing parts the survivors and auxiliary nodes form under W_S
    (1 = everything still mixes)."""
    # A breadth-first search over boolean rows: networkx would first build a Python graph
    # of the block's |S|^2 links (a star rule's), 6 ms a round for a cohort of 50.
    links = (mix.block != 0) | (mix.block.T != 0)
    unseen = np.ones(len(links), dtype=bool)
    parts = 0
    while unseen.any():
        parts += 1
        frontier = np.zeros_like(unseen)
        frontier[np.argmax(unseen)] = True
        while frontier.any():
            unseen &= ~frontier
            frontier = links[frontier].any(axis=0) & unseen
    return parts
