"""The papers' mixing matrices, their zeta, and the checks every W passes before training."""

from __future__ import annotations

import numpy as np
import pytest

from fedcoop import mixing, theory, topology
from fedcoop.errors import ConfigError


def eigen_zeta(w: np.ndarray) -> float:
    """zeta straight from the definition, independent of mixing.zeta."""
    values = np.sort(np.linalg.eigvalsh(w))[::-1]
    return max(abs(values[1]), abs(values[-1]))


def assert_doubly_stochastic(w: np.ndarray) -> None:
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


def ring_mh(m: int) -> np.ndarray:
    return topology.metropolis_hastings(topology.ring(m))


# --- averaging and zeta ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_averaging_has_zeta_zero(n: int) -> None:
    j = mixing.averaging(n)
    np.testing.assert_allclose(j, np.full((n, n), 1 / n))
    assert mixing.zeta(j) == pytest.approx(0.0, abs=1e-12)
    assert mixing.column_zeta(j) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(
        mixing.validate(j, num_workers=n, num_aux=0, symmetric=True, nonnegative=True), j
    )


def test_zeta_of_identity_is_one() -> None:
    assert mixing.zeta(np.eye(4)) == pytest.approx(1.0)


def test_zeta_refuses_a_non_symmetric_matrix() -> None:
    with pytest.raises(ConfigError, match="symmetric"):
        mixing.zeta(mixing.overlap(3, 0.5))


@pytest.mark.parametrize("m", [3, 6, 9])
def test_column_zeta_equals_zeta_for_doubly_stochastic(m: int) -> None:
    w = ring_mh(m)
    assert mixing.column_zeta(w) == pytest.approx(mixing.zeta(w), abs=1e-12)
    assert mixing.spectral_gap_zeta(w) == pytest.approx(eigen_zeta(w), abs=1e-12)
    np.testing.assert_allclose(mixing.stationary_vector(w), np.full(m, 1 / m))


def test_spectral_gap_zeta_uses_the_norm_for_non_symmetric() -> None:
    p = mixing.overlap(4, 0.3)
    assert mixing.spectral_gap_zeta(p) == pytest.approx(mixing.column_zeta(p))


# --- EASGD ------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
def test_lemma_1_best_alpha_gives_m_over_m_plus_2(m: int) -> None:
    w = mixing.easgd(m, 2 / (m + 2))
    assert eigen_zeta(w) == pytest.approx(m / (m + 2), abs=1e-12)
    assert mixing.zeta(w) == pytest.approx(m / (m + 2), abs=1e-12)
    assert theory.easgd_best_alpha(m) == pytest.approx(2 / (m + 2))


@pytest.mark.parametrize("m", [2, 8])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.9, 0.99])
def test_eq_20_matches_eigenvalues(m: int, fraction: float) -> None:
    alpha = fraction * 2 / (m + 1)
    w = mixing.easgd(m, alpha)
    assert eigen_zeta(w) == pytest.approx(theory.easgd_zeta(alpha, m), abs=1e-12)
    assert_doubly_stochastic(w)
    mixing.validate(w, num_workers=m, num_aux=1, symmetric=True, nonnegative=False)


def test_easgd_layout_matches_eq_11() -> None:
    w = mixing.easgd(3, 0.2)
    expected = np.array(
        [
            [0.8, 0.0, 0.0, 0.2],
            [0.0, 0.8, 0.0, 0.2],
            [0.0, 0.0, 0.8, 0.2],
            [0.2, 0.2, 0.2, 0.4],
        ]
    )
    np.testing.assert_allclose(w, expected)


@pytest.mark.parametrize("alpha", [2 / 9, 0.25, 1.0, 0.0, -0.1, float("nan")])
def test_easgd_refuses_alpha_outside_the_limit(alpha: float) -> None:
    with pytest.raises(ConfigError) as info:
        mixing.easgd(8, alpha)
    message = str(info.value)
    assert message.startswith("alpha=")
    assert "2/(m+1) = 0.2222" in message
    assert "m=8" in message


# --- generalized elastic averaging (Lemma 2) ------------------------------------------------


@pytest.mark.parametrize("m", [4, 8, 12])
def test_lemma_2_default_alpha_reaches_the_minimum(m: int) -> None:
    w = ring_mh(m)
    z = eigen_zeta(w)
    w_prime = mixing.generalized_elastic(w)
    assert w_prime.shape == (m + 1, m + 1)
    assert_doubly_stochastic(w_prime)
    z_prime = eigen_zeta(w_prime)
    assert z_prime == pytest.approx(m * z / (m + 1 + z), abs=1e-12)
    assert z_prime < z
    # The default alpha is Lemma 2's: the auxiliary row holds alpha.
    np.testing.assert_allclose(w_prime[m, :m], (1 + z) / (m + 1 + z))


@pytest.mark.parametrize("fraction", [0.1, 0.4, 0.7, 0.95])
def test_eq_25_matches_eigenvalues(fraction: float) -> None:
    m = 8
    w = ring_mh(m)
    alpha = fraction * 2 / (m + 1)
    w_prime = mixing.generalized_elastic(w, alpha)
    expected = theory.generalized_elastic_zeta(alpha, eigen_zeta(w), m)
    assert eigen_zeta(w_prime) == pytest.approx(expected, abs=1e-12)


def test_generalized_elastic_of_identity_is_easgd() -> None:
    m = 5
    np.testing.assert_allclose(mixing.generalized_elastic(np.eye(m)), mixing.easgd(m, 2 / (m + 2)))


def test_generalized_elastic_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"alpha=0\.3 is invalid.*0\.2222"):
        mixing.generalized_elastic(ring_mh(8), 0.3)
    with pytest.raises(ConfigError, match="symmetric"):
        # Doubly stochastic but not symmetric: Lemma 2 does not apply.
        mixing.generalized_elastic(np.array([[0.5, 0.2, 0.3], [0.3, 0.5, 0.2], [0.2, 0.3, 0.5]]))
    with pytest.raises(ConfigError, match="sum to 1"):
        mixing.generalized_elastic(2 * ring_mh(4))


# --- hierarchical averaging -----------------------------------------------------------------


@pytest.mark.parametrize(
    "groups",
    [
        [[0, 1, 2], [3, 4], [5]],
        [[4, 0], [1, 2, 3, 5, 6]],
        [[0], [1], [2], [3]],
        mixing.even_groups(10, 3),
    ],
)
def test_hierarchical_is_symmetric_doubly_stochastic_nonnegative(groups) -> None:
    w = mixing.hierarchical(groups)
    m, g = sum(map(len, groups)), len(groups)
    assert w.shape == (m + g, m + g)
    assert_doubly_stochastic(w)
    assert (w >= -1e-15).all()
    assert eigen_zeta(w) < 1 - 1e-6
    alpha = 1 / (max(map(len, groups)) + 1)
    for k, group in enumerate(groups):
        for i in group:
            assert w[i, i] == pytest.approx(1 - alpha)
            assert w[m + k, i] == pytest.approx(alpha)
            # A worker talks to its own group node and nobody else.
            assert np.count_nonzero(w[:, i]) == 2


def test_hierarchical_with_given_aux_mixing() -> None:
    groups = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9]]
    b = ring_mh(4)
    w = mixing.hierarchical(groups, alpha=0.2, aux_mixing=b)
    assert_doubly_stochastic(w)
    assert (w >= 0).all()
    assert eigen_zeta(w) < 1
    # Group nodes 0 and 2 are not linked in the ring among group nodes.
    assert w[10, 12] == 0.0
    r_min = 1 - 4 * 0.2
    assert w[10, 11] == pytest.approx(r_min * b[0, 1])


def test_hierarchical_with_one_group_is_easgd() -> None:
    np.testing.assert_allclose(
        mixing.hierarchical([[0, 1, 2, 3]], alpha=0.25), mixing.easgd(4, 0.25)
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"groups": [[0, 1], [1, 2]]}, "groups="),
        ({"groups": [[0, 1], [3]]}, "groups="),
        ({"groups": [[0, 1], []]}, "groups="),
        ({"groups": []}, "groups="),
        ({"groups": [[0, 1.0]]}, "groups="),
        ({"groups": [[0, 1, 2], [3]], "alpha": 1 / 3}, "alpha="),
        ({"groups": [[0, 1, 2], [3]], "alpha": 0.0}, "alpha="),
        ({"groups": [[0, 1], [2]], "aux_mixing": np.eye(3)}, "shape (2, 2) for 2 groups"),
        ({"groups": [[0, 1], [2]], "aux_mixing": np.eye(2)}, "never receives"),
        (
            {"groups": [[0, 1], [2]], "aux_mixing": np.array([[0.6, 0.5], [0.5, 0.6]])},
            "sum to 1",
        ),
    ],
)
def test_hierarchical_refuses(kwargs, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        mixing.hierarchical(**kwargs)
    assert fragment in str(info.value)


def test_even_groups() -> None:
    assert mixing.even_groups(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert mixing.even_groups(4, 4) == [[0], [1], [2], [3]]
    with pytest.raises(ConfigError, match="g=5"):
        mixing.even_groups(4, 5)


# --- Overlap-Local-SGD's P ---------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 4, 16])
@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.6, 0.95])
def test_overlap_p_is_column_stochastic_with_stationary_v(m: int, alpha: float) -> None:
    p = mixing.overlap(m, alpha)
    v = mixing.overlap_stationary(m, alpha)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(p @ v, v, atol=1e-12)
    assert v.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(mixing.stationary_vector(p), v, atol=1e-10)
    assert mixing.column_zeta(p) <= 1 - alpha + 1e-12
    assert mixing.column_zeta(p, v) <= theory.overlap_zeta_bound(alpha) + 1e-12
    mixing.validate(p, num_workers=m, num_aux=1, symmetric=False, nonnegative=True)
    if m > 1:
        assert not np.allclose(p, p.T)


def test_overlap_layout_matches_eq_6() -> None:
    p = mixing.overlap(2, 0.6)
    expected = np.array([[0.4, 0.0, 0.2], [0.0, 0.4, 0.2], [0.6, 0.6, 0.6]])
    np.testing.assert_allclose(p, expected)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_overlap_refuses_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha="):
        mixing.overlap(4, alpha)


def test_stationary_vector_refuses_matrix_without_eigenvalue_one() -> None:
    with pytest.raises(ConfigError, match="eigenvalue 1"):
        mixing.stationary_vector(0.5 * np.eye(3))


# --- validate -----------------------------------------------------------------------------------


def _validate(w: object, m: int, v: int = 0, symmetric: bool = True, nonnegative: bool = True):
    return mixing.validate(
        w, num_workers=m, num_aux=v, symmetric=symmetric, nonnegative=nonnegative
    )


def test_validate_returns_float64() -> None:
    out = _validate([[0.5, 0.5], [0.5, 0.5]], 2)
    assert out.dtype == np.float64


def test_validate_names_expected_shape_and_clients() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(mixing.averaging(3), 8, 1)
    message = str(info.value)
    assert "(9, 9)" in message and "8 clients" in message and "(3, 3)" in message


@pytest.mark.parametrize("w", [np.ones(4) / 4, np.ones((2, 2, 2)), np.ones((2, 3)) / 2])
def test_validate_refuses_non_matrices(w: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="shape"):
        _validate(w, 2)


def test_validate_names_a_negative_entry() -> None:
    w = topology.laplacian_optimal(topology.star(4))  # hub self weight 1 - 0.4 * 3 = -0.2
    with pytest.raises(ConfigError, match=r"W\[0, 0\]=-0.2.*>= 0"):
        _validate(w, 4)
    _validate(w, 4, nonnegative=False)


def test_validate_names_a_column_that_does_not_sum_to_one() -> None:
    w = mixing.averaging(3)
    w[:, 1] = [0.5, 0.5, 0.1]
    with pytest.raises(ConfigError, match=r"W\[:, 1\]\.sum\(\)=1\.1.*sum to 1"):
        _validate(w, 3, symmetric=False)


def test_validate_refuses_asymmetric_when_symmetry_is_required() -> None:
    p = mixing.overlap(3, 0.5)
    with pytest.raises(ConfigError, match="symmetric"):
        _validate(p, 3, 1, symmetric=True)
    _validate(p, 3, 1, symmetric=False)


def test_validate_refuses_a_disconnected_block_diagonal_w() -> None:
    w = np.zeros((4, 4))
    w[:2, :2] = w[2:, 2:] = 0.5
    with pytest.raises(ConfigError, match=r"zeta\(W\)=1\.0.*does not mix.*disconnected"):
        _validate(w, 4)


def test_validate_refuses_a_worker_that_never_receives() -> None:
    with pytest.raises(ConfigError, match="worker 0 never receives"):
        _validate(np.eye(3), 3)
    w = np.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    with pytest.raises(ConfigError, match="worker 1 never receives"):
        _validate(w, 3)


def test_validate_refuses_periodic_mixing() -> None:
    # Swapping two models forever: connected, but eigenvalue -1 means no consensus.
    with pytest.raises(ConfigError, match="does not mix"):
        _validate(np.array([[0.0, 1.0], [1.0, 0.0]]), 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_validate_refuses_non_finite(bad: float) -> None:
    w = mixing.averaging(3)
    w[1, 2] = bad
    with pytest.raises(ConfigError, match=r"W\[1, 2\].*finite"):
        _validate(w, 3)


def test_validate_refuses_non_numeric() -> None:
    with pytest.raises(ConfigError, match="real"):
        _validate(np.array([["a", "b"], ["c", "d"]]), 2)


def test_validate_uses_the_given_name() -> None:
    with pytest.raises(ConfigError, match="W_alpha"):
        mixing.validate(
            np.eye(2), num_workers=1, num_aux=1, symmetric=True, nonnegative=True, name="W_alpha"
        )


def test_validate_single_client_needs_no_mixing() -> None:
    np.testing.assert_array_equal(_validate([[1.0]], 1), [[1.0]])


@pytest.mark.parametrize("tau", [1, 5, np.int64(3)])
def test_valid_tau_accepts(tau: int) -> None:
    assert mixing.valid_tau(tau) == int(tau)
    assert type(mixing.valid_tau(tau)) is int


@pytest.mark.parametrize("tau", [0, -2, 2.5, 2.0, True, "3", None])
def test_valid_tau_refuses(tau: object) -> None:
    with pytest.raises(ConfigError, match="tau="):
        mixing.valid_tau(tau)


def test_a_rank_one_average_is_accepted_without_its_spectrum(monkeypatch) -> None:
    """W = p 1^T (J, FedAvg's weights) reaches consensus in one sync: validate needs no
    O(n^3) spectrum for it, which at thousands of workers would take seconds."""

    def refuse(*_: object) -> float:
        raise AssertionError("the spectrum was computed")

    monkeypatch.setattr(mixing, "zeta", refuse)
    monkeypatch.setattr(mixing, "column_zeta", refuse)
    p = np.arange(1.0, 7.0) / 21.0
    w = np.repeat(p[:, None], 6, axis=1)
    np.testing.assert_allclose(
        mixing.validate(w, num_workers=6, num_aux=0, symmetric=False, nonnegative=True), w
    )
    mixing.validate(mixing.averaging(6), num_workers=6, num_aux=0, symmetric=True, nonnegative=True)
    ring = topology.weigh("metropolis-hastings", topology.ring(6))
    with pytest.raises(AssertionError, match="spectrum"):
        mixing.validate(ring, num_workers=6, num_aux=0, symmetric=True, nonnegative=True)
