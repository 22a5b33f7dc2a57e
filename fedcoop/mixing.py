"""Mixing matrices of Cooperative SGD A(tau, W, v), their spectral quantities, and validation.

Convention (eq. 8-10): X = [x_1 .. x_m, z_1 .. z_v] is d x (m+v) and X_{k+1} = (X_k - eta G_k) W,
so column i of W holds the weights of the new model i: W[j, i] is the weight of node j in node
i's new model, and every column sums to 1. Workers come first, auxiliary nodes last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcoop.errors import ConfigError
from fedcoop.theory import (
    check_elastic_alpha,
    check_int,
    check_real,
    generalized_elastic_best_alpha,
)

# Column sums and symmetry are compared with this absolute tolerance: weights such as 1/3 are
# not exact in floating point, but a real mistake is far larger.
_TOL = 1e-9


def _array(w: object, name: str) -> np.ndarray:
    """np.asarray, but a ragged or odd input becomes a ConfigError a user can read."""
    try:
        return np.asarray(w)
    except (TypeError, ValueError) as exc:
        raise ConfigError(name, type(w).__name__, f"{name} must be a 2-D numeric array") from exc


def _square(w: object, name: str) -> np.ndarray:
    """A finite real square 2-D matrix as float64; anything else cannot be a mixing matrix."""
    a = _array(w, name)
    if a.dtype.kind not in "biuf":
        raise ConfigError(name, f"dtype {a.dtype}", f"{name} must be a real (float) matrix")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ConfigError(name, f"shape {a.shape}", f"{name} must be a non-empty square matrix")
    a = a.astype(np.float64)
    bad = np.argwhere(~np.isfinite(a))
    if bad.size:
        i, j = (int(k) for k in bad[0])
        raise ConfigError(f"{name}[{i}, {j}]", float(a[i, j]), "entries must be finite")
    return a


def is_symmetric(w: np.ndarray) -> bool:
    """Symmetry up to rounding, since weights like 1/3 are not exact."""
    return bool(np.allclose(w, w.T, rtol=0.0, atol=_TOL))


def checked(
    w: object, name: str, size: int, what: str, *, symmetric: bool, nonnegative: bool
) -> np.ndarray:
    """Shape, finiteness, sign, column sums and symmetry; the parts of `validate` that do not
    need eigenvalues, shared with the checks of user-given sub-matrices."""
    a = _array(w, name)
    if a.ndim != 2 or a.shape != (size, size):
        raise ConfigError(
            name, f"shape {a.shape}", f"{name} must have shape ({size}, {size}) for {what}"
        )
    a = _square(a, name)
    if nonnegative:
        bad = np.argwhere(a < -_TOL)
        if bad.size:
            i, j = (int(k) for k in bad[0])
            raise ConfigError(f"{name}[{i}, {j}]", float(a[i, j]), "entries must be >= 0")
    sums = a.sum(axis=0)
    bad_cols = np.flatnonzero(np.abs(sums - 1.0) > _TOL)
    if bad_cols.size:
        j = int(bad_cols[0])
        raise ConfigError(
            f"{name}[:, {j}].sum()",
            float(sums[j]),
            f"every column of {name} must sum to 1 (the new model {j} is a weighted average)",
        )
    if symmetric and not is_symmetric(a):
        i, j = (int(k) for k in np.argwhere(np.abs(a - a.T) > _TOL)[0])
        raise ConfigError(
            f"{name}[{i}, {j}]",
            float(a[i, j]),
            f"{name} must be symmetric but {name}[{j}, {i}] = {float(a[j, i])!r}",
        )
    return a


def _check_mixes(a: np.ndarray, name: str, num_workers: int, *, symmetric: bool) -> None:
    """Refuse a W under which the models never reach consensus (zeta >= 1, Assumption 5)."""
    n = a.shape[0]
    if n == 1:
        return
    for i in range(n):
        column = a[:, i].copy()
        column[i] = 0.0
        if not np.any(np.abs(column) > _TOL):
            who = f"worker {i}" if i < num_workers else f"auxiliary node {i - num_workers}"
            raise ConfigError(
                f"{name}[{i}, {i}]",
                float(a[i, i]),
                f"{who} never receives from any other node (column {i} is e_{i}), so it "
                "never mixes; zeta = 1",
            )
    if np.array_equal(a, np.repeat(a[:, :1], n, axis=1)):
        # W = p 1^T (J, FedAvg's weights): every column is the same average, so one sync
        # reaches consensus (zeta = 0) without the O(n^3) spectrum, which costs seconds at
        # thousands of workers.
        return
    z = zeta(a) if symmetric else column_zeta(a)
    if z >= 1.0 - _TOL:
        raise ConfigError(
            f"zeta({name})",
            z,
            f"zeta must be < 1: {name} does not mix, so the models never reach consensus "
            "(the graph is disconnected or periodic)",
        )


def validate(
    w: object,
    *,
    num_workers: int,
    num_aux: int,
    symmetric: bool,
    nonnegative: bool,
    name: str = "W",
) -> np.ndarray:
    """Check a mixing matrix before any training starts and return it as float64.

    A symmetric W whose columns sum to 1 also has rows summing to 1 (doubly stochastic, as
    Assumption 5 needs). A non-symmetric W is judged by ||W - v 1^T||_2 as in the overlap
    paper's analysis.
    """
    m = check_int("num_workers", num_workers, 1)
    v = check_int("num_aux", num_aux, 0)
    what = f"{m} clients and {v} auxiliary nodes"
    a = checked(w, name, m + v, what, symmetric=symmetric, nonnegative=nonnegative)
    _check_mixes(a, name, m, symmetric=symmetric)
    return a


def valid_tau(tau: object) -> int:
    """tau, the number of local steps between two mixings (eq. 7), as an int >= 1."""
    return check_int("tau", tau, 1, "tau (local steps per round) must be an integer >= 1")


def averaging(n: int) -> np.ndarray:
    """J = 1 1^T/n: full averaging, the W of synchronous SGD and PASGD (zeta = 0)."""
    n = check_int("n", n, 1)
    return np.full((n, n), 1.0 / n)


def easgd(m: int, alpha: float) -> np.ndarray:
    """EASGD's W_alpha of eq. (11), (m+1) x (m+1) with the centre variable last.

    For alpha in (1/m, 2/(m+1)) the centre's self weight 1 - m alpha is negative; the paper
    allows it because zeta stays below 1.
    """
    m = check_int("m", m, 1)
    alpha = check_elastic_alpha(alpha, m, "EASGD")
    w = np.zeros((m + 1, m + 1))
    w[:m, :m] = (1 - alpha) * np.eye(m)
    w[:m, m] = alpha
    w[m, :m] = alpha
    w[m, m] = 1 - m * alpha
    return w


def generalized_elastic(w: object, alpha: float | None = None) -> np.ndarray:
    """W' of eq. (23): a decentralized W plus one elastic auxiliary node linked to all workers.

    Lemma 2 lowers zeta to max((1-alpha) zeta, |1-(m+1) alpha|); alpha defaults to its best
    value (1+zeta)/(m+1+zeta). W may itself not mix (zeta = 1, e.g. W = I gives EASGD) since
    the auxiliary node connects everyone.
    """
    a = _square(w, "W")
    m = a.shape[0]
    a = checked(a, "W", m, f"{m} workers", symmetric=True, nonnegative=False)
    z = zeta(a)
    if z > 1.0 + _TOL:
        raise ConfigError(
            "zeta(W)", z, "Lemma 2 needs the eigenvalues of W in [-1, 1], i.e. zeta <= 1"
        )
    if alpha is None:
        alpha = generalized_elastic_best_alpha(min(z, 1.0), m)
    alpha = check_elastic_alpha(alpha, m, "generalized elastic averaging")
    out = np.empty((m + 1, m + 1))
    out[:m, :m] = (1 - alpha) * a
    out[:m, m] = alpha
    out[m, :m] = alpha
    out[m, m] = 1 - m * alpha
    return validate(out, num_workers=m, num_aux=1, symmetric=True, nonnegative=False, name="W'")


def even_groups(m: int, g: int) -> list[list[int]]:
    """Split workers 0..m-1 into g contiguous groups whose sizes differ by at most one."""
    m = check_int("m", m, 1)
    g = check_int("g", g, 1)
    if g > m:
        raise ConfigError("g", g, f"cannot split m={m} workers into more than {m} non-empty groups")
    return [[int(i) for i in part] for part in np.array_split(np.arange(m), g)]


def _check_groups(groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Each worker in exactly one non-empty group, the workers numbered 0..m-1."""
    valid = "groups must be non-empty lists of worker ids that partition 0..m-1"
    try:
        parts = [list(group) for group in groups]
    except TypeError as exc:
        raise ConfigError("groups", groups, valid) from exc
    if not parts or any(not part for part in parts):
        raise ConfigError("groups", groups, valid + " (an empty group has no worker to pull)")
    members = [i for part in parts for i in part]
    if any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in members):
        raise ConfigError("groups", groups, valid + " (ids must be integers)")
    if sorted(members) != list(range(len(members))):
        raise ConfigError("groups", groups, valid + " (each worker exactly once)")
    return [[int(i) for i in part] for part in parts]


def hierarchical(
    groups: Sequence[Sequence[int]],
    alpha: float | None = None,
    aux_mixing: np.ndarray | None = None,
) -> np.ndarray:
    """Hierarchical averaging (section 6.3): one auxiliary node per group of workers.

    Workers pull toward their group node with weight alpha; the group nodes mix among
    themselves with B = aux_mixing, scaled by the smallest leftover mass r_min so that every
    column can still sum to 1. The result is symmetric and doubly stochastic, and nonnegative
    when B is. Columns m..m+g-1 are the group nodes in the order of `groups`.
    """
    parts = _check_groups(groups)
    m, g = sum(len(part) for part in parts), len(parts)
    largest = max(len(part) for part in parts)
    if alpha is None:
        alpha = 1 / (largest + 1)
    if g == 1:
        alpha = check_real(
            "alpha",
            alpha,
            above=0.0,
            at_most=1 / largest,
            valid=f"hierarchical averaging needs 0 < alpha <= 1/{largest} (the group size)",
        )
    else:
        # At alpha = 1/largest the largest group's node has no mass left for the other group
        # nodes, and the groups would never exchange anything.
        alpha = check_real(
            "alpha",
            alpha,
            above=0.0,
            below=1 / largest,
            valid=f"hierarchical averaging needs 0 < alpha < 1/{largest} (the largest group "
            f"size) = {1 / largest:.4f} so that the {g} group nodes keep weight to mix",
        )
    if aux_mixing is None:
        b = averaging(g)
    else:
        b = checked(aux_mixing, "aux_mixing", g, f"{g} groups", symmetric=True, nonnegative=False)
        _check_mixes(b, "aux_mixing", 0, symmetric=True)
    rest = np.array([1 - len(part) * alpha for part in parts])
    r_min = rest.min()
    w = np.zeros((m + g, m + g))
    for k, part in enumerate(parts):
        for i in part:
            w[i, i] = 1 - alpha
            w[m + k, i] = alpha
            w[i, m + k] = alpha
        w[m:, m + k] = r_min * b[:, k]
        w[m + k, m + k] = rest[k] - r_min * (1 - b[k, k])
    return validate(
        w, num_workers=m, num_aux=g, symmetric=True, nonnegative=False, name="hierarchical W"
    )


def overlap(m: int, alpha: float) -> np.ndarray:
    """Overlap-Local-SGD's P (overlap eq. 6/15): workers pulled toward the anchor, the anchor
    set to a mix of the workers' mean and itself. Column-stochastic, not symmetric."""
    m = check_int("m", m, 1)
    alpha = check_real("alpha", alpha, above=0.0, below=1.0)
    p = np.zeros((m + 1, m + 1))
    p[:m, :m] = (1 - alpha) * np.eye(m)
    p[:m, m] = (1 - alpha) / m
    p[m, :] = alpha
    return p


def overlap_stationary(m: int, alpha: float) -> np.ndarray:
    """v = [(1-alpha)/m 1; alpha] with P v = v: the weights of the virtual sequence y_k = X_k v
    that the overlap analysis follows (overlap appendix A)."""
    m = check_int("m", m, 1)
    alpha = check_real("alpha", alpha, above=0.0, below=1.0)
    return np.append(np.full(m, (1 - alpha) / m), alpha)


def stationary_vector(w: object) -> np.ndarray:
    """The v with W v = v and 1^T v = 1: the weights of the average that rule (10) preserves
    for a column-stochastic W (1/n for a doubly stochastic one)."""
    a = _square(w, "W")
    values, vectors = np.linalg.eig(a)
    k = int(np.argmin(np.abs(values - 1.0)))
    if abs(values[k] - 1.0) > 1e-8:
        raise ConfigError(
            "W", "no eigenvalue 1", "W must have eigenvalue 1 (its columns must sum to 1)"
        )
    vector = np.real(vectors[:, k])
    total = vector.sum()
    if abs(total) < 1e-12:
        raise ConfigError(
            "W",
            "eigenvalue 1 repeated",
            "W has no unique stationary vector: the graph is disconnected",
        )
    return vector / total


def zeta(w: object) -> float:
    """max(|lambda_2|, |lambda_n|) of a symmetric W (Assumption 5): how slowly the models
    reach consensus; 0 for J, 1 for a W that does not mix."""
    a = _square(w, "W")
    if not is_symmetric(a):
        raise ConfigError("W", "non-symmetric matrix", "zeta needs a symmetric W; use column_zeta")
    if a.shape[0] == 1:
        return 0.0
    values = np.sort(np.linalg.eigvalsh(a))[::-1]
    return float(max(abs(values[1]), abs(values[-1])))


def column_zeta(w: object, v: np.ndarray | None = None) -> float:
    """||W - v 1^T||_2 of a column-stochastic W (overlap appendix A), the zeta that replaces
    Assumption 5's eigenvalue for non-symmetric W."""
    a = _square(w, "W")
    n = a.shape[0]
    vec = stationary_vector(a) if v is None else np.asarray(v, dtype=np.float64)
    if vec.shape != (n,) or not np.all(np.isfinite(vec)):
        raise ConfigError("v", f"shape {vec.shape}", f"v must be a finite vector of length {n}")
    return float(np.linalg.norm(a - np.outer(vec, np.ones(n)), 2))


def spectral_gap_zeta(w: object) -> float:
    """zeta for any mixing matrix: the eigenvalue form when W is symmetric, else the norm form."""
    a = _square(w, "W")
    return zeta(a) if is_symmetric(a) else column_zeta(a)


def read_matrix(path: str | Path, key: str) -> np.ndarray:
    """Read one matrix from .npy, or from text (.csv or whitespace separated).

    A file that is not a numeric matrix fails as a ConfigError under the run-config `key`
    that named the file, not as numpy's parser error from deep inside the run.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, str(path), "no such file")
    try:
        if file.suffix == ".npy":
            w = np.load(file)
        else:
            w = np.loadtxt(file, delimiter="," if file.suffix == ".csv" else None, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ConfigError(key, str(path), f"cannot read a numeric matrix: {exc}") from None
    if w.dtype.kind not in "biuf":
        raise ConfigError(key, str(path), f"holds {w.dtype} values, not a numeric matrix")
    return w
