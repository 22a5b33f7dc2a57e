"""Time-varying mixing: random pairwise gossip and a user's sequence of matrices.

Each schedule offers the interface the coordinator calls per round: `matrix(round_)` (W_r,
rounds counted from 1, a pure function of the construction arguments, the seed and the round),
`expected()` (E[W_r]), `edges(round_)` (the links round r uses, which the clock charges),
`rho()` (||E[W_r^T W_r] - J||_2, the mean-square mixing rate MATCHA's analysis uses) and
`num_workers`. A single W_r may leave workers alone; only the rounds together must mix.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import networkx as nx
import numpy as np

from fedcoop import mixing
from fedcoop.errors import ConfigError
from fedcoop.matcha import Edge, Matching, decompose, laplacian, spectral_norm
from fedcoop.theory import check_int

#: Mixed into every round's seed so gossip draws differ from MATCHA's for the same seed.
SALT = 0x474F5353  # "GOSS"

KEY = "topology-schedule"

# An off-diagonal weight at or below this is no link, as in fedcoop.mixing's checks.
_TOL = 1e-9


class _UniformPairs:
    """Each round, one of a fixed list of matchings chosen uniformly; each matched pair
    averages its two models (W_r = I - L_r / 2) and everyone else keeps its own."""

    def __init__(self, pools: tuple[Matching, ...], num_workers: int, seed: int) -> None:
        self.pools = pools
        self.num_workers = num_workers
        self.seed = check_int("seed", seed, 0)

    def choice(self, round_: int) -> int:
        """The index of the matching used in round `round_` (from 1)."""
        round_ = check_int("round", round_, 1)
        return int(np.random.default_rng((self.seed, round_, SALT)).integers(len(self.pools)))

    def edges(self, round_: int) -> Matching:
        """The pairs that average in round `round_`."""
        return self.pools[self.choice(round_)]

    def matrix(self, round_: int) -> np.ndarray:
        """I - L_r / 2: symmetric, doubly stochastic, nonnegative."""
        return np.eye(self.num_workers) - laplacian(self.num_workers, self.edges(round_)) / 2

    def expected(self) -> np.ndarray:
        """I - L / (2K), L the Laplacian of all K matchings together."""
        every = [e for pool in self.pools for e in pool]
        return np.eye(self.num_workers) - laplacian(self.num_workers, every) / (2 * len(self.pools))

    def rho(self) -> float:
        """||E[W^T W] - J||_2 = ||E[W] - J||_2: each W_r is a projection (L_r^2 = 2 L_r for a
        matching), so W_r^T W_r = W_r; equal to 1 - lambda_2(L) / (2K)."""
        return spectral_norm(self.expected())


class RandomMatching(_UniformPairs):
    """Gossip over one random matching per round, from `fedcoop.matcha.decompose`: every
    worker in a matched pair communicates, in parallel over disjoint pairs."""

    def __init__(self, adjacency: object, seed: int) -> None:
        matchings = decompose(adjacency)
        super().__init__(matchings, np.asarray(adjacency).shape[0], seed)


class RandomEdge(_UniformPairs):
    """Randomized gossip (Boyd, Ghosh, Prabhakar & Shah, 2006) with a uniform edge: one pair
    averages per round."""

    def __init__(self, adjacency: object, seed: int) -> None:
        edges = sorted(e for matching in decompose(adjacency) for e in matching)
        super().__init__(tuple((e,) for e in edges), np.asarray(adjacency).shape[0], seed)


def _natural(name: str) -> list[object]:
    """Sort key with digit runs compared as numbers: w2 before w10, arr_9 before arr_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_npz(file: Path) -> list[tuple[str, np.ndarray]]:
    # allow_pickle stays off: a schedule is numbers, and unpickling runs code.
    try:
        archive = np.load(file)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(KEY, str(file), f"cannot read an .npz of matrices: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConfigError(KEY, str(file), "must be an .npz archive or a folder of .npy/.csv files")
    with archive:
        return [(f"{file}:{n}", archive[n]) for n in sorted(archive.files, key=_natural)]


def _read_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(
        (f for f in folder.iterdir() if f.suffix in (".npy", ".csv") and f.is_file()),
        key=lambda f: _natural(f.name),
    )
    return [(str(f), mixing.read_matrix(f, KEY)) for f in files]


class MatrixSequence:
    """A user's W_1 .. W_K, repeated: round r uses W_{(r-1) mod K} (0-based in file order)."""

    def __init__(self, matrices: tuple[np.ndarray, ...], source: str) -> None:
        self.matrices = matrices
        self.source = source
        self.num_workers = matrices[0].shape[0]

    @classmethod
    def load(cls, path: str | Path, num_workers: int) -> MatrixSequence:
        """Read and validate a sequence of m x m mixing matrices, m = num_workers.

        `path` is an .npz (arrays in natural name order: arr_0, arr_1, ..., arr_10 as
        np.savez writes positional arrays, or the names given to np.savez, sorted the same
        way) or a folder of .npy / .csv files (file names in natural order: w2 before w10).
        Each W_r must be square m x m, finite, and symmetric with columns summing to 1 (so
        doubly stochastic, D-PSGD's requirement; negative weights are allowed as for a
        symmetric matrix-file). The union of their links must connect all workers, or some
        models would never mix; a single W_r need not.
        """
        m = check_int("num-clients", num_workers, 1)
        file = Path(path)
        if file.is_dir():
            named = _read_folder(file)
        elif file.is_file():
            named = _read_npz(file)
        else:
            raise ConfigError(KEY, str(path), "no such .npz file or folder")
        if not named:
            raise ConfigError(KEY, str(path), "holds no matrices (.npz arrays or .npy/.csv files)")
        what = f"num-clients={m}"
        # mixing's checks without its zeta test, which a single gossip W_r need not pass.
        matrices = tuple(
            mixing.checked(w, f"{KEY}[{name}]", m, what, symmetric=True, nonnegative=False)
            for name, w in named
        )
        support = np.any([np.abs(w) > _TOL for w in matrices], axis=0)
        np.fill_diagonal(support, False)
        parts = nx.number_connected_components(nx.from_numpy_array(support.astype(np.int8)))
        if parts > 1:
            raise ConfigError(
                KEY,
                str(path),
                f"the links of all {len(matrices)} matrices together leave {parts} groups of "
                "workers that never exchange models; their union must be connected",
            )
        return cls(matrices, str(path))

    def matrix(self, round_: int) -> np.ndarray:
        """W_{(r-1) mod K}."""
        round_ = check_int("round", round_, 1)
        return self.matrices[(round_ - 1) % len(self.matrices)]

    def edges(self, round_: int) -> tuple[Edge, ...]:
        """The links with a nonzero weight in round `round_`'s matrix, (i, j) with i < j."""
        w = self.matrix(round_)
        return tuple((int(a), int(b)) for a, b in np.argwhere(np.triu(np.abs(w) > _TOL, k=1)))

    def expected(self) -> np.ndarray:
        """The mean of the K matrices: E[W_r] for r drawn uniformly over one period."""
        return np.mean(self.matrices, axis=0)

    def rho(self) -> float:
        """||mean_r W_r^T W_r - J||_2: MATCHA's rho for a round drawn uniformly from the
        sequence, so the figure compares with the random schedules'."""
        return spectral_norm(np.mean([w.T @ w for w in self.matrices], axis=0))
