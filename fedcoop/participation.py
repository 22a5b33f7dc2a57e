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

from collections.abc import Callable, Collection, Sequence

import networkx as nx
import numpy as np

from fedcoop import topology

#: (W, m, survivors) -> W_S for the survivors' and auxiliary columns (see module docstring)
Reweight = Callable[[np.ndarray, int, frozenset[int]], np.ndarray]


def sample(seed: int, round_: int, num_workers: int, fraction: float) -> frozenset[int]:
    """The workers sampled to train round `round_`: round(fraction * m) of them (at least
    one), seeded by (seed, round) so every process and every resume draws the same."""
    if fraction >= 1.0:
        return frozenset(range(num_workers))
    k = max(1, round(fraction * num_workers))
    rng = np.random.default_rng([seed, round_])
    return frozenset(int(i) for i in rng.choice(num_workers, size=k, replace=False))


def subset(seed: int, workers: Sequence[int], size: int) -> list[int]:
    """`size` of `workers` (all of them when size is 0 or at least their number), drawn
    seeded by `seed`, in order: which workers a run evaluates at its end."""
    if not size or size >= len(workers):
        return list(workers)
    rng = np.random.default_rng([seed, len(workers), size])
    return sorted(int(w) for w in rng.choice(workers, size=size, replace=False))


def _present(w: np.ndarray, m: int, survivors: Collection[int]) -> np.ndarray:
    """Boolean mask over the m + v nodes: survivors and every auxiliary node."""
    mask = np.zeros(w.shape[0], dtype=bool)
    mask[list(survivors)] = True
    mask[m:] = True
    return mask


def _identity_outside(w_s: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Zero the rows and columns of missing nodes and put 1 on their diagonal."""
    w_s[~present, :] = 0.0
    w_s[:, ~present] = 0.0
    missing = np.flatnonzero(~present)
    w_s[missing, missing] = 1.0
    return w_s


def renormalize(w: np.ndarray, m: int, survivors: frozenset[int]) -> np.ndarray:
    """Each present column's weights on present nodes, scaled to sum 1."""
    present = _present(w, m, survivors)
    w_s = _identity_outside(np.array(w, dtype=np.float64), present)
    sums = w_s[:, present].sum(axis=0)
    w_s[:, present] = w_s[:, present] / np.where(sums == 0.0, 1.0, sums)
    return w_s


def keep_self(w: np.ndarray, m: int, survivors: frozenset[int]) -> np.ndarray:
    """Each present column moves the weight of missing nodes onto its own diagonal."""
    present = _present(w, m, survivors)
    w_s = _identity_outside(np.array(w, dtype=np.float64), present)
    idx = np.flatnonzero(present)
    w_s[idx, idx] += 1.0 - w_s[:, idx].sum(axis=0)
    return w_s


def graph_reweight(weighting: str) -> Reweight:
    """Re-weigh the surviving subgraph of W's links with `weighting`, per connected part."""

    def reweight(w: np.ndarray, m: int, survivors: frozenset[int]) -> np.ndarray:
        w_s = np.eye(w.shape[0])
        links = (w[:m, :m] != 0) & ~np.eye(m, dtype=bool)
        alive = sorted(survivors)
        graph = nx.from_numpy_array(links[np.ix_(alive, alive)].astype(np.int8))
        for part in nx.connected_components(graph):
            nodes = [alive[k] for k in sorted(part)]
            if len(nodes) > 1:
                w_s[np.ix_(nodes, nodes)] = topology.weigh(weighting, links[np.ix_(nodes, nodes)])
        return w_s

    return reweight


def components(w_s: np.ndarray, m: int, survivors: Collection[int]) -> int:
    """How many separately mixing parts the survivors and auxiliary nodes form under W_S
    (1 = everything still mixes)."""
    alive = [*sorted(survivors), *range(m, w_s.shape[0])]
    links = (w_s[np.ix_(alive, alive)] != 0) | (w_s[np.ix_(alive, alive)].T != 0)
    return nx.number_connected_components(nx.from_numpy_array(links.astype(np.int8)))


def round_matrix(
    w: np.ndarray, m: int, survivors: frozenset[int], reweight: Reweight
) -> np.ndarray:
    """W_S: survivors' and auxiliary columns by `reweight`, missing workers adopting."""
    if len(survivors) == m:
        return np.asarray(w, dtype=np.float64)
    w_s = reweight(w, m, survivors)
    present = _present(w, m, survivors)
    for i in set(range(m)) - survivors:
        column = np.where(present, w[:, i], 0.0)
        total = column.sum()
        if total > 0:
            w_s[:, i] = column / total
    return w_s
