"""Property tests: any config or matrix either resolves or gets a ConfigError, never a crash.

Hypothesis draws run configs (valid and invalid values for every key that shapes the
algorithm) and matrices; each must either resolve to a validated spec or raise ConfigError
naming the parameter, never a traceback from deep inside numpy, networkx or torch.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcoop import algorithms, topology
from fedcoop.config import RunConfig
from fedcoop.cooperative import CooperativeSpec
from fedcoop.errors import ConfigError

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 40))
configs = st.fixed_dictionaries(
    {
        "algorithm": st.sampled_from([*algorithms.ALGORITHMS, "nope"]),
        "num-clients": st.integers(-1, 20),
        "tau": st.integers(-1, 10),
        "lr": numbers,
        "alpha": st.one_of(st.just("auto"), numbers, st.just("x")),
        "anchor-momentum": st.one_of(st.just("auto"), numbers),
        "topology": st.sampled_from([*topology.TOPOLOGIES, "mesh"]),
        "weighting": st.sampled_from([*topology.WEIGHTINGS, "uniform"]),
        "groups": st.integers(-1, 20),
        "update-rule": st.sampled_from(["auto", "mix-after-step", "mix-before-step", "late"]),
        "momentum": numbers,
        "seed": st.integers(0, 5),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_every_config_resolves_or_names_its_problem(values: dict[str, object]) -> None:
    try:
        config = RunConfig.from_mapping(values)
        spec = algorithms.resolve(config)
    except ConfigError as error:
        assert error.parameter and str(error)
        return
    assert spec.num_workers == config.num_clients
    assert np.all(np.isfinite(spec.w))
    np.testing.assert_allclose(spec.w.sum(axis=0), 1.0, atol=1e-9)


entries = st.one_of(st.floats(-1, 2), st.sampled_from([0.0, np.nan, np.inf]))
raw = st.integers(1, 6).flatmap(
    lambda n: st.lists(entries, min_size=n * n, max_size=n * n).map(
        lambda xs: np.array(xs).reshape(n, n)
    )
)
# Nonnegative matrices with unit column sums reach the spectral and symmetry checks.
column_stochastic = raw.map(lambda w: np.abs(np.nan_to_num(w, posinf=1.0)) + 1e-3).map(
    lambda w: w / w.sum(axis=0)
)
matrices = st.one_of(raw, column_stochastic, column_stochastic.map(lambda w: (w + w.T) / 2))


@settings(max_examples=300, deadline=None)
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
        assert str(error)
        return
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-9)
