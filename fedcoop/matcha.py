"""MATCHA: a random sparse topology per round, drawn from a matching decomposition.

Wang, Sahu, Yang, Joshi & Kar, "MATCHA: Speeding Up Decentralized SGD via Matching Decomposition
Sampling" (arXiv 1905.09435), Section 3 ("MATCHA"): the base graph is split into M disjoint
matchings (step 1); matching j is activated in a round with probability p_j, chosen to keep the
expected graph as well connected as a communication budget C_b allows (step 2); a round mixes
with W_r = I - alpha L_r, L_r the Laplacian of the activated matchings, alpha chosen to minimise
the spectral norm rho = ||E[W^T W] - J||_2 that the convergence analysis (Section 4) depends on
(step 3). A matching needs one parallel exchange over disjoint pairs, so a round costs as many
exchanges as it activates matchings: C_b is the expected share of the full graph's cost.

Everything here is a pure function of the graph, the budget, the seed and the round number, so
every process draws the same W_r without talking to the others.

The paper solves steps 2 and 3 as semidefinite programs with CVX. No SDP solver is installed
with fedcoop (cvxpy with scipy and its solvers is about 85 MB of wheels for a problem with a
handful of variables), so both are solved with numpy: step 2 by projected supergradient ascent
on the concave lambda_2, step 3 by golden-section search on a convex function of one variable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from fedcoop import topology
from fedcoop.errors import ConfigError
from fedcoop.theory import check_int, check_real

Edge = tuple[int, int]
Matching = tuple[Edge, ...]

#: Mixed into every round's seed so MATCHA's draws differ from other users of (seed, round).
SALT = 0x4D415443  # "MATC"

# Step 2's ascent: iterations and the first step (a length in p-space; steps shrink as
# 1/sqrt(k)). Eigenvalues closer than _CLUSTER are treated as one (see _supergradient).
_ASCENT_STEPS = 300
_FIRST_STEP = 0.25
_CLUSTER = 1e-7
# Step 3's golden-section search: the bracket shrinks by 0.618 per step, to ~1e-13 of itself.
_SEARCH_STEPS = 64


def _budget(budget: object) -> float:
    """C_b, the expected share of the matchings a round activates."""
    return check_real("comm-budget", budget, above=0.0, at_most=1.0, valid="must be in (0, 1]")


def _graph(adjacency: object) -> np.ndarray:
    """A validated adjacency matrix, its errors under the run-config key `topology`."""
    try:
        return topology.from_adjacency(adjacency)
    except ConfigError as exc:
        raise ConfigError("topology", f"{exc.parameter}={exc.value!r}", exc.valid) from None


def _misra_gries(n: int, edges: list[Edge]) -> dict[Edge, int]:
    """A proper edge colouring with at most Delta + 1 colours (Misra & Gries, 1992).

    The paper decomposes with a (Delta + 1)-colouring; greedy colouring of the line graph may
    need up to 2 Delta - 1, and fewer matchings mean fewer exchanges for the full graph.
    """
    colour_of: list[dict[int, int]] = [{} for _ in range(n)]  # colour_of[x][y]: edge xy
    end: list[dict[int, int]] = [{} for _ in range(n)]  # end[x][c]: x's neighbour by colour c
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)

    def paint(x: int, y: int, c: int) -> None:
        colour_of[x][y] = colour_of[y][x] = c
        end[x][c], end[y][c] = y, x

    def scrape(x: int, y: int) -> int:
        c = colour_of[x].pop(y)
        del colour_of[y][x], end[x][c], end[y][c]
        return c

    def first_free(x: int) -> int:
        return next(c for c in itertools.count() if c not in end[x])

    for u, v in edges:
        # A maximal fan of u from v: each next edge's colour is free on the previous fan end.
        fan = [v]
        while True:
            last = fan[-1]
            nxt = next(
                (
                    x
                    for x in sorted(neighbours[u])
                    if x not in fan and x in colour_of[u] and colour_of[u][x] not in end[last]
                ),
                None,
            )
            if nxt is None:
                break
            fan.append(nxt)
        c, d = first_free(u), first_free(fan[-1])
        # Invert the path from u alternating d, c, d, ...: afterwards d is free on u.
        path, x, col = [], u, d
        while col in end[x]:
            y = end[x][col]
            path.append((x, y, col))
            x, col = y, (c if col == d else d)
        for a, b, _ in path:
            scrape(a, b)
        for a, b, col in path:
            paint(a, b, c if col == d else d)
        # The first fan end w with d free whose prefix is still a fan; rotate the fan up to w.
        w = 0
        for k, x in enumerate(fan):
            if k and not (x in colour_of[u] and colour_of[u][x] not in end[fan[k - 1]]):
                break
            if d not in end[x]:
                w = k
                break
        for k in range(w):
            paint(u, fan[k], scrape(u, fan[k + 1]))
        paint(u, fan[w], d)
    return {(a, b): colour_of[a][b] for a, b in edges}


def _greedy_line_colouring(edges: list[Edge], strategy: str) -> dict[Edge, int]:
    """networkx's greedy vertex colouring of the line graph: edges sharing a node differ."""
    colouring = nx.greedy_color(nx.line_graph(nx.Graph(edges)), strategy=strategy)
    return {(min(e), max(e)): c for e, c in colouring.items()}


# Greedy colourings of the line graph tried besides Misra & Gries: no bound better than
# 2 Delta - 1, but on rings of even length, hypercubes and tori they often find Delta colours,
# where Misra & Gries stops at Delta + 1.
_GREEDY_STRATEGIES = ("DSATUR", "smallest_last", "independent_set")


def decompose(adjacency: object) -> tuple[Matching, ...]:
    """Step 1: the graph's edges split into disjoint matchings (a proper edge colouring).

    The fewest colours among Misra & Gries (at most Delta + 1, the paper's choice) and a few
    greedy colourings: fewer matchings make the full graph cheaper and the budget finer.
    Deterministic: edges (i, j) with i < j, sorted within a matching, matchings in colour
    order. A graph without edges or not connected raises a ConfigError naming `topology`.
    """
    adj = _graph(adjacency)
    edges = [(int(a), int(b)) for a, b in np.argwhere(np.triu(adj))]
    candidates = [_misra_gries(adj.shape[0], edges)]
    candidates += [_greedy_line_colouring(edges, s) for s in _GREEDY_STRATEGIES]
    colours = min(candidates, key=lambda c: len(set(c.values())))
    classes: dict[int, list[Edge]] = {}
    for edge, c in colours.items():
        classes.setdefault(c, []).append(edge)
    return tuple(tuple(sorted(classes[c])) for c in sorted(classes))


def laplacian(num_workers: int, edges: tuple[Edge, ...] | list[Edge]) -> np.ndarray:
    """The graph Laplacian D - A of an edge set on `num_workers` nodes, as float64."""
    lap = np.zeros((num_workers, num_workers))
    for a, b in edges:
        lap[a, a] += 1.0
        lap[b, b] += 1.0
        lap[a, b] -= 1.0
        lap[b, a] -= 1.0
    return lap


def _complement_basis(m: int) -> np.ndarray:
    """An orthonormal basis (m x (m-1)) of the vectors orthogonal to 1: lambda_2 of a Laplacian
    is the smallest eigenvalue there, even when the weighted graph is disconnected."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(m), np.eye(m)[:, : m - 1]]))
    return q[:, 1:]


def algebraic_connectivity(laplacians: list[np.ndarray], p: np.ndarray) -> float:
    """lambda_2(sum_j p_j L_j), step 2's objective."""
    lap = np.tensordot(p, np.asarray(laplacians), axes=1)
    basis = _complement_basis(lap.shape[0])
    return float(np.linalg.eigvalsh(basis.T @ lap @ basis)[0])


def _supergradient(laplacians: np.ndarray, p: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """u^T L_j u for the Fiedler vector u, averaged over lambda_2's eigenspace.

    Rings and hypercubes have a repeated lambda_2; any one eigenvector is a supergradient,
    but the average does not favour one arbitrarily, so a symmetric optimum stays put.
    """
    values, vectors = np.linalg.eigh(basis.T @ np.tensordot(p, laplacians, axes=1) @ basis)
    u = basis @ vectors[:, values <= values[0] + _CLUSTER]
    return np.einsum("ik,jil,lk->j", u, laplacians, u) / u.shape[1]


def _onto_capped_simplex(p: np.ndarray, total: float) -> np.ndarray:
    """The Euclidean projection onto {0 <= p <= 1, sum p = total}: clip(p - t, 0, 1) with t
    found by bisection, as the sum falls monotonically in t."""
    lo, hi = float(p.min()) - 1.0, float(p.max())
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.clip(p - mid, 0.0, 1.0).sum() > total:
            lo = mid
        else:
            hi = mid
    return np.clip(p - (lo + hi) / 2, 0.0, 1.0)


def activation_probabilities(laplacians: list[np.ndarray], budget: float) -> np.ndarray:
    """Step 2: p maximising lambda_2(sum_j p_j L_j) s.t. sum_j p_j <= C_b M, 0 <= p_j <= 1.

    lambda_2 never falls as any p_j grows (each L_j is positive semidefinite), so an optimum
    spends the whole budget: the ascent starts at the uniform p_j = C_b and moves within
    sum p = C_b M, keeping the best point it visits. The problem is concave, so this
    converges to the optimum; budget 1 is all ones without search.
    """
    budget = _budget(budget)
    lap = np.asarray(laplacians, dtype=np.float64)
    count = lap.shape[0]
    if budget == 1.0:
        return np.ones(count)
    basis = _complement_basis(lap.shape[1])
    p = best = np.full(count, budget)
    best_value = algebraic_connectivity(list(lap), p)
    for k in range(_ASCENT_STEPS):
        g = _supergradient(lap, p, basis)
        direction = g - g.mean()
        norm = float(np.linalg.norm(direction))
        if norm < 1e-12:
            break
        p = _onto_capped_simplex(
            p + _FIRST_STEP / math.sqrt(k + 1) * direction / norm, budget * count
        )
        value = algebraic_connectivity(list(lap), p)
        if value > best_value:
            best, best_value = p, value
    return best


def second_moment(laplacians: list[np.ndarray], p: np.ndarray, alpha: float) -> np.ndarray:
    """E[W^T W] for W = I - alpha sum_j B_j L_j, B_j ~ Bernoulli(p_j) independent:
    I - 2 alpha Lbar + alpha^2 (Lbar^2 + 2 sum_j p_j (1 - p_j) L_j), Lbar = sum_j p_j L_j,
    using L_j^2 = 2 L_j for the Laplacian of a matching."""
    lap = np.asarray(laplacians, dtype=np.float64)
    mean = np.tensordot(p, lap, axes=1)
    variance = np.tensordot(p * (1.0 - p), lap, axes=1)
    eye = np.eye(lap.shape[1])
    return eye - 2.0 * alpha * mean + alpha**2 * (mean @ mean + 2.0 * variance)


def spectral_norm(second: np.ndarray) -> float:
    """rho = ||E[W^T W] - J||_2 (Section 4): below 1, the models reach consensus in mean
    square; the smaller, the faster."""
    m = second.shape[0]
    return float(np.max(np.abs(np.linalg.eigvalsh(second - np.full((m, m), 1.0 / m)))))


def best_alpha(laplacians: list[np.ndarray], p: np.ndarray) -> tuple[float, float]:
    """Step 3: (alpha, rho) with alpha minimising rho(alpha) = ||E[W^T W] - J||_2.

    The paper solves this as an SDP. E[W^T W] - J is a matrix quadratic in alpha with a
    positive semidefinite leading term, so rho is convex in alpha; rho(0) = 1, and rho < 1
    needs alpha < 2 / lambda_max(Lbar), so golden-section search on that bracket finds it.
    """
    lap = np.asarray(laplacians, dtype=np.float64)
    mean = np.tensordot(p, lap, axes=1)
    lo, hi = 0.0, 2.0 / float(np.linalg.eigvalsh(mean)[-1])

    def rho(alpha: float) -> float:
        return spectral_norm(second_moment(list(lap), p, alpha))

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    rho_a, rho_b = rho(a), rho(b)
    for _ in range(_SEARCH_STEPS):
        if rho_a <= rho_b:
            hi, b, rho_b = b, a, rho_a
            a = hi - ratio * (hi - lo)
            rho_a = rho(a)
        else:
            lo, a, rho_a = a, b, rho_b
            b = lo + ratio * (hi - lo)
            rho_b = rho(b)
    alpha = (lo + hi) / 2
    return alpha, rho(alpha)


@dataclass(frozen=True)
class Matcha:
    """A MATCHA schedule: W_r = I - alpha sum_{j active in r} L_j, j active with prob. p_j."""

    matchings: tuple[Matching, ...]
    probabilities: tuple[float, ...]
    alpha: float
    seed: int
    num_workers: int

    @classmethod
    def build(cls, adjacency: object, budget: float, seed: int) -> Matcha:
        """Steps 1-3 for a graph and a communication budget C_b in (0, 1]."""
        budget = _budget(budget)
        seed = check_int("seed", seed, 0)
        matchings = decompose(adjacency)
        m = np.asarray(adjacency).shape[0]
        laps = [laplacian(m, matching) for matching in matchings]
        p = activation_probabilities(laps, budget)
        alpha, _ = best_alpha(laps, p)
        return cls(matchings, tuple(float(x) for x in p), alpha, seed, m)

    def _laplacians(self) -> list[np.ndarray]:
        return [laplacian(self.num_workers, matching) for matching in self.matchings]

    def active(self, round_: int) -> tuple[int, ...]:
        """The matchings activated in round `round_` (from 1): B_j = [u_j < p_j], u_j uniform
        from a generator seeded by (seed, round, SALT) alone."""
        round_ = check_int("round", round_, 1)
        draws = np.random.default_rng((self.seed, round_, SALT)).random(len(self.matchings))
        return tuple(
            j for j, (u, p) in enumerate(zip(draws, self.probabilities, strict=True)) if u < p
        )

    def edges(self, round_: int) -> tuple[Edge, ...]:
        """The links used in round `round_`, sorted: the only ones a round's exchange costs."""
        return tuple(sorted(e for j in self.active(round_) for e in self.matchings[j]))

    def matrix(self, round_: int) -> np.ndarray:
        """W_r = I - alpha L_r: symmetric, doubly stochastic, possibly disconnected."""
        return np.eye(self.num_workers) - self.alpha * laplacian(
            self.num_workers, self.edges(round_)
        )

    def expected(self) -> np.ndarray:
        """E[W_r] = I - alpha sum_j p_j L_j."""
        p = np.asarray(self.probabilities)
        return np.eye(self.num_workers) - self.alpha * np.tensordot(
            p, np.asarray(self._laplacians()), axes=1
        )

    def rho(self) -> float:
        """||E[W^T W] - J||_2 at this alpha: the minimised rho of step 3."""
        second = second_moment(self._laplacians(), np.asarray(self.probabilities), self.alpha)
        return spectral_norm(second)
