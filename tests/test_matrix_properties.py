"""Property tests: a user matrix either resolves and runs, or gets a ConfigError naming it.

Hypothesis builds mixing matrices that must be accepted (doubly stochastic weights of graphs,
EASGD's, hierarchical and overlap matrices with their auxiliary nodes), and breaks them (NaN,
a column that does not sum to 1, rows summing to 1 instead of columns, a missing column, a
disconnected or non-mixing graph, the wrong num-aux, no 2-D array at all). Written to .npy,
.csv or .txt and loaded through algorithm = "cooperative", each must resolve if it was valid
and be refused with a ConfigError naming W, matrix-file, num-aux or num-clients (which must
match W) if it was broken; never any other exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoop import algorithms, mixing, topology
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from fedcoop.spec import CooperativeSpec
from tests.conftest import MATRIX_KEYS, TINY, named_key, run_tiny

GRAPHS: dict[str, Callable[[int], np.ndarray]] = {
    "complete": topology.complete,
    "ring": topology.ring,
    "star": topology.star,
    "exponential": topology.exponential,
}


@dataclass(frozen=True)
class Case:
    """A matrix, the num-aux given with it, and whether the cooperative algorithm must accept
    it (True), refuse it (False) or may do either (None). num-clients is always the number of
    workers W was built for, so that a wrong num-aux is caught against it."""

    w: np.ndarray
    num_aux: int
    valid: bool | None
    what: str
    workers: int = 1

    @staticmethod
    def built(w: np.ndarray, num_aux: int, what: str) -> Case:
        """A valid matrix with its own num-aux."""
        return Case(w, num_aux, True, what, w.shape[0] - num_aux)


graph_cases = st.builds(
    lambda make, n, weighting: Case.built(
        topology.weigh(weighting, GRAPHS[make](n)), 0, f"{weighting} {make}({n})"
    ),
    st.sampled_from(sorted(GRAPHS)),
    st.integers(2, 6),
    st.sampled_from(topology.WEIGHTINGS),
)
elastic_cases = st.one_of(
    st.builds(
        lambda m, share: Case.built(mixing.easgd(m, share * 2 / (m + 1)), 1, f"easgd({m})"),
        st.integers(1, 5),
        st.floats(0.05, 0.95),
    ),
    st.builds(
        lambda m, g: Case.built(mixing.hierarchical(mixing.even_groups(m, g)), g, "hierarchical"),
        st.integers(2, 5),
        st.integers(1, 2),
    ),
    st.builds(
        lambda m, alpha: Case.built(mixing.overlap(m, alpha), 1, f"overlap({m}, {alpha})"),
        st.integers(1, 5),
        st.floats(0.05, 0.95),
    ),
)
valid_cases = st.one_of(graph_cases, elastic_cases)


def column_stochastic(n: int, seed: int) -> Case:
    """A random positive W with unit column sums: it may or may not mix (zeta < 1)."""
    w = np.random.default_rng(seed).random((n, n)) + 1e-3
    return Case(w / w.sum(axis=0), 0, None, "random column-stochastic", n)


def broken(case: Case, how: str, i: int) -> Case:
    """`case` damaged in one way that no mixing matrix may have."""
    w, n = case.w.copy(), case.w.shape[0]
    i %= n
    if how == "nan":
        w[i, (i + 1) % n] = np.nan
    elif how == "inf":
        w[i, i] = np.inf
    elif how == "column sum":
        w[:, i] *= 2.0
    elif how == "rows sum to 1":
        w = w * np.arange(1, n + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            w /= w.sum(axis=1, keepdims=True)
        if np.allclose(w.sum(axis=0), 1.0, rtol=0.0, atol=1e-6):  # scaled back by chance
            return Case(w, case.num_aux, None, f"{case.what}, row-stochastic", case.workers)
    elif how == "missing column":
        w = np.delete(w, i, axis=1)
    elif how == "disconnected":
        zero = np.zeros_like(w)
        w = np.block([[w, zero], [zero, w]])
        return Case(w, 2 * case.num_aux, False, f"{case.what} twice, unlinked", 2 * case.workers)
    return Case(w, case.num_aux, False, f"{case.what}, {how}", case.workers)


BREAKS = ["nan", "inf", "column sum", "rows sum to 1", "missing column", "disconnected"]
broken_cases = st.builds(broken, valid_cases, st.sampled_from(BREAKS), st.integers(0, 10))
# I (no worker ever receives anything) and a cyclic permutation (models circulate unmixed).
non_mixing_cases = st.builds(
    lambda n, shift: Case(np.roll(np.eye(n), shift, axis=0), 0, False, f"I rolled {shift}", n),
    st.integers(2, 6),
    st.integers(0, 1),
)
wrong_aux_cases = st.builds(
    lambda case, delta: Case(
        case.w, case.num_aux + delta, False, f"{case.what}, num-aux off", case.workers
    ),
    valid_cases,
    st.sampled_from([-1, 1, 2]),
)
odd_shapes = st.sampled_from(
    [
        Case(np.ones(3) / 3, 0, False, "a vector"),
        Case(np.full((2, 2, 2), 0.5), 0, False, "a 3-D array"),
        Case(np.zeros((0, 0)), 0, False, "empty"),
        Case(np.array(1.0), 0, False, "a scalar"),
        Case(np.full((2, 3), 0.5), 0, False, "2 x 3"),
    ]
)
cases = st.one_of(
    valid_cases,
    st.builds(column_stochastic, st.integers(2, 5), st.integers(0, 100)),
    broken_cases,
    non_mixing_cases,
    wrong_aux_cases,
    odd_shapes,
)


def write(w: np.ndarray, folder: Path, suffix: str) -> Path:
    """W in a file as users write it: numpy's binary form, or text (only 2-D fits in text)."""
    if w.ndim != 2 or w.size == 0:
        suffix = ".npy"
    path = folder / f"w{suffix}"
    if suffix == ".npy":
        np.save(path, w)
    else:
        np.savetxt(path, w, delimiter="," if suffix == ".csv" else " ")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user-matrices")


def cooperative(case: Case, path: Path) -> RunConfig:
    """The tiny run config of the case's file."""
    return RunConfig.from_mapping(
        {
            **TINY,
            "algorithm": "cooperative",
            "matrix-file": str(path),
            "num-aux": case.num_aux,
            "num-clients": case.workers,
            "num-rounds": 1,
            "tau": 2,
        }
    )


def resolved(case: Case, path: Path) -> CooperativeSpec | ConfigError:
    """The spec of the case's file, or the ConfigError that refused it (checked here)."""
    try:
        config = cooperative(case, path)
        spec = algorithms.resolve(config)
    except ConfigError as error:
        named = named_key(error.parameter)
        assert named in MATRIX_KEYS, f"{case.what}: {error}"
        assert str(error).startswith(f"{error.parameter}={error.value!r} is invalid: ")
        if named == "num-clients":  # W's size and num-aux decide the valid num-clients
            assert "W is" in error.valid and "num-aux" in error.valid, str(error)
        assert case.valid is not True, f"{case.what} was refused: {error}"
        return error
    assert case.valid is not False, f"{case.what} was accepted"
    np.testing.assert_array_equal(spec.w, case.w)
    assert spec.num_workers == config.num_clients
    np.testing.assert_allclose(spec.w.sum(axis=0), 1.0, atol=1e-9)
    assert mixing.spectral_gap_zeta(spec.w) < 1
    return spec


@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=cases, suffix=st.sampled_from([".npy", ".csv", ".txt"]))
def test_every_matrix_file_resolves_or_names_its_problem(
    case: Case, suffix: str, folder: Path
) -> None:
    resolved(case, write(case.w, folder, suffix))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(case=valid_cases, suffix=st.sampled_from([".npy", ".csv"]))
def test_valid_matrix_files_run_to_finite_metrics(case: Case, suffix: str, folder: Path) -> None:
    path = write(case.w, folder, suffix)
    assert isinstance(resolved(case, path), CooperativeSpec)
    run_tiny(cooperative(case, path).to_mapping())


@pytest.mark.parametrize(
    ("content", "suffix"),
    [("a,b\nc,d\n", ".csv"), ("0.5 0.5\n0.5\n", ".txt"), ("", ".csv"), ("not numpy", ".npy")],
)
def test_a_file_that_holds_no_numeric_matrix_names_the_file(
    content: str, suffix: str, folder: Path
) -> None:
    path = folder / f"text{suffix}"
    path.write_text(content)
    error = resolved(Case(np.eye(2), 0, False, repr(content)), path)
    assert isinstance(error, ConfigError) and error.parameter in ("matrix-file", "W")


entries = st.one_of(st.floats(-1, 2), st.sampled_from([0.0, np.nan, np.inf, 1e308, -1e308]))
raw = st.integers(1, 6).flatmap(
    lambda n: st.lists(entries, min_size=n * n, max_size=n * n).map(
        lambda xs: np.array(xs).reshape(n, n)
    )
)
# Nonnegative matrices with unit column sums reach the spectral and symmetry checks.
normalized = raw.map(lambda w: np.abs(np.nan_to_num(w, posinf=1.0, neginf=1.0)) + 1e-3).map(
    lambda w: w / w.sum(axis=0)
)
matrices = st.one_of(raw, normalized, normalized.map(lambda w: (w + w.T) / 2))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(matrices, st.integers(0, 2), st.booleans(), st.booleans())
def test_every_matrix_validates_or_names_its_problem(
    w: np.ndarray, num_aux: int, symmetric: bool, nonnegative: bool
) -> None:
    spec = CooperativeSpec(
        tau=1, w=w, num_aux=num_aux, symmetric=symmetric, nonnegative=nonnegative
    )
    try:
        spec.validate()
    except ConfigError as error:
        assert named_key(error.parameter) in ("W", "num-aux"), str(error)
        return
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-9)
    assert mixing.spectral_gap_zeta(w) < 1
