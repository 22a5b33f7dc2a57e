"""Communication graphs among workers and the symmetric weightings that turn them into W.

Graphs are symmetric boolean adjacency matrices without self loops, built with networkx. A
weighting gives a symmetric doubly stochastic W (Assumption 5 of Cooperative SGD), whose
W[j, i] is the weight of worker j in worker i's new model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import networkx as nx
import numpy as np

from fedcoop.errors import ConfigError
from fedcoop.theory import check_int, check_real

TOPOLOGIES = (
    "complete",
    "ring",
    "torus",
    "star",
    "hypercube",
    "exponential",
    "erdos-renyi",
    "random-geometric",
)
WEIGHTINGS = ("metropolis-hastings", "max-degree", "laplacian")

# Random graphs are re-drawn until connected; a bounded number of draws turns a hopeless
# setting (p far below ln(n)/n) into an error instead of an endless loop.
_MAX_DRAWS = 100


def _nodes(n: int) -> int:
    """A graph size; one node alone has nothing to mix with."""
    return check_int("n", n, 2, "n must be an integer >= 2 (a graph needs two nodes to mix)")


def _adjacency(graph: nx.Graph) -> np.ndarray:
    """Sorted node order makes tuple-labelled graphs row-major (torus) or binary (hypercube)."""
    return nx.to_numpy_array(graph, nodelist=sorted(graph), dtype=bool)


def complete(n: int) -> np.ndarray:
    """Every worker linked to every other one."""
    return _adjacency(nx.complete_graph(_nodes(n)))


def ring(n: int) -> np.ndarray:
    """Worker i linked to i-1 and i+1 (mod n); n = 2 is a single edge."""
    return _adjacency(nx.cycle_graph(_nodes(n)))


def torus(rows: int, cols: int) -> np.ndarray:
    """A rows x cols grid with wrap-around links; node r*cols + c sits at (r, c).

    Degree 4 when rows, cols >= 3; a side of 2 has its two wrap links coincide.
    """
    rows = check_int("rows", rows, 1)
    cols = check_int("cols", cols, 1)
    if rows * cols < 2:
        raise ConfigError("cols", cols, "a torus needs rows x cols >= 2 nodes")
    return _adjacency(nx.grid_2d_graph(rows, cols, periodic=True))


def star(n: int) -> np.ndarray:
    """Node 0 is the hub linked to all others, which have no other link."""
    return _adjacency(nx.star_graph(_nodes(n) - 1))


def hypercube(n: int) -> np.ndarray:
    """Nodes i and j linked when their binary labels differ in one bit; degree log2 n."""
    n = _nodes(n)
    if n & (n - 1):
        raise ConfigError("n", n, "a hypercube needs n to be a power of 2 (2, 4, 8, ...)")
    return _adjacency(nx.hypercube_graph(n.bit_length() - 1))


def exponential(n: int) -> np.ndarray:
    """Node i linked to i +/- 2^k (mod n) for 2^k <= n-1: few links, short paths."""
    n = _nodes(n)
    offsets = [2**k for k in range((n - 1).bit_length())]
    return _adjacency(nx.circulant_graph(n, offsets))


def _derived_seed(seed: int, draw: int) -> int:
    """The first draw uses `seed` itself, so it matches networkx called with that seed."""
    if draw == 0:
        return seed
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def _connected_draw(
    make: Callable[[int], nx.Graph], seed: int, parameter: str, value: float, what: str
) -> np.ndarray:
    """Re-draw a seeded random graph until it is connected, reproducibly."""
    seed = check_int("seed", seed, 0)
    for draw in range(_MAX_DRAWS):
        graph = make(_derived_seed(seed, draw))
        if nx.is_connected(graph):
            return _adjacency(graph)
    raise ConfigError(
        parameter,
        value,
        f"the {what} stayed disconnected in {_MAX_DRAWS} draws from seed={seed}; raise {parameter}",
    )


def erdos_renyi(n: int, p: float, seed: int) -> np.ndarray:
    """Each pair linked with probability p; connected with high probability once
    p > ln(n)/n."""
    n = _nodes(n)
    p = check_real("p", p, above=0.0, at_most=1.0)
    what = f"erdos-renyi graph with n={n}, p={p:g} (connectivity needs p > ln(n)/n = "
    what += f"{math.log(n) / n:.3f})"
    return _connected_draw(lambda s: nx.gnp_random_graph(n, p, seed=s), seed, "p", p, what)


def random_geometric(n: int, radius: float, seed: int) -> np.ndarray:
    """Nodes placed uniformly in the unit square, linked within `radius`: a model of
    devices that reach only nearby peers. Connected with high probability once
    radius > sqrt(ln(n)/(pi n))."""
    n = _nodes(n)
    radius = check_real("radius", radius, above=0.0)
    threshold = math.sqrt(math.log(n) / (math.pi * n))
    what = f"random geometric graph with n={n}, radius={radius:g} (connectivity needs "
    what += f"radius > sqrt(ln(n)/(pi n)) = {threshold:.3f})"
    return _connected_draw(
        lambda s: nx.random_geometric_graph(n, radius, seed=s), seed, "radius", radius, what
    )


def from_adjacency(a: object) -> np.ndarray:
    """Validate a user-given adjacency matrix and return it as a boolean array.

    Weights are built from it, so a self loop, an asymmetric link or a disconnected graph
    would silently give a W that does not mix.
    """
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise ConfigError("adjacency", type(a).__name__, "must be a square 0/1 matrix") from exc
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2:
        raise ConfigError(
            "adjacency", f"shape {arr.shape}", "must be a square n x n matrix with n >= 2"
        )
    if arr.dtype.kind not in "biuf":
        raise ConfigError("adjacency", f"dtype {arr.dtype}", "must be a 0/1 (or boolean) matrix")
    bad = np.argwhere((arr != 0) & (arr != 1))
    if bad.size:
        i, j = (int(k) for k in bad[0])
        raise ConfigError(f"adjacency[{i}, {j}]", arr[i, j].item(), "entries must be 0 or 1")
    adj = arr.astype(bool)
    loops = np.flatnonzero(np.diag(adj))
    if loops.size:
        i = int(loops[0])
        raise ConfigError(f"adjacency[{i}, {i}]", 1, "the diagonal must be 0 (no self loops)")
    if not np.array_equal(adj, adj.T):
        i, j = (int(k) for k in np.argwhere(adj != adj.T)[0])
        raise ConfigError(
            f"adjacency[{i}, {j}]",
            int(adj[i, j]),
            f"links must be undirected (symmetric) but adjacency[{j}, {i}] = {int(adj[j, i])}",
        )
    components = nx.number_connected_components(nx.from_numpy_array(adj.astype(np.int8)))
    if components > 1:
        raise ConfigError(
            "adjacency",
            f"{components} connected components",
            "the graph must be connected, or the models of different parts never mix",
        )
    return adj


def metropolis_hastings(adj: object) -> np.ndarray:
    """w_ij = 1/(1 + max(d_i, d_j)) on links, the rest on the diagonal: needs only the
    neighbours' degrees, so each worker can compute its own column."""
    a = from_adjacency(adj)
    degree = a.sum(axis=1)
    w = np.where(a, 1.0 / (1.0 + np.maximum.outer(degree, degree)), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def max_degree(adj: object) -> np.ndarray:
    """w_ij = 1/(1 + d_max) on links, the rest on the diagonal: one global constant."""
    a = from_adjacency(adj)
    w = a / (1.0 + a.sum(axis=1).max())
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def laplacian_optimal(adj: object) -> np.ndarray:
    """W = I - a L with a = 2/(lambda_2(L) + lambda_max(L)), the best constant edge weight
    (smallest zeta among W = I - a L). It may have negative entries."""
    a = from_adjacency(adj).astype(np.float64)
    laplacian = np.diag(a.sum(axis=1)) - a
    eigenvalues = np.linalg.eigvalsh(laplacian)  # ascending; [1] > 0 as the graph is connected
    step = 2.0 / (eigenvalues[1] + eigenvalues[-1])
    return np.eye(a.shape[0]) - step * laplacian


def _default_rows(n: int) -> int:
    """The squarest split n = rows x cols with rows <= cols."""
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    if rows == 1:
        raise ConfigError(
            "n",
            n,
            f"a torus needs n = rows x cols with rows >= 2, and n={n} has no such split; "
            "pick another n or pass rows=1 for a 1 x n ring",
        )
    return rows


def build(
    name: str,
    n: int,
    *,
    seed: int = 0,
    p: float = 0.5,
    radius: float = 0.5,
    rows: int | None = None,
) -> np.ndarray:
    """The adjacency matrix of a topology named in a run config.

    seed, p and radius are used by the random graphs only, rows by the torus only.
    """
    n = _nodes(n)
    if name == "torus":
        if rows is None:
            rows = _default_rows(n)
        rows = check_int("rows", rows, 1)
        if n % rows:
            raise ConfigError("rows", rows, f"rows must divide n={n} for a rows x cols torus")
        return torus(rows, n // rows)
    builders: dict[str, Callable[[], np.ndarray]] = {
        "complete": lambda: complete(n),
        "ring": lambda: ring(n),
        "star": lambda: star(n),
        "hypercube": lambda: hypercube(n),
        "exponential": lambda: exponential(n),
        "erdos-renyi": lambda: erdos_renyi(n, p, seed),
        "random-geometric": lambda: random_geometric(n, radius, seed),
    }
    if name not in builders:
        raise ConfigError("topology", name, f"valid topologies: {', '.join(TOPOLOGIES)}")
    return builders[name]()


def weigh(name: str, adj: object) -> np.ndarray:
    """The mixing matrix of a weighting named in a run config."""
    weightings: dict[str, Callable[[object], np.ndarray]] = {
        "metropolis-hastings": metropolis_hastings,
        "max-degree": max_degree,
        "laplacian": laplacian_optimal,
    }
    if name not in weightings:
        raise ConfigError("weighting", name, f"valid weightings: {', '.join(WEIGHTINGS)}")
    return weightings[name](adj)
