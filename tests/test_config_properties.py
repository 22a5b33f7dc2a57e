"""Property tests: any config either runs or gets a ConfigError naming its key, never a crash.

Hypothesis draws run configs that mix valid and invalid values of every key; each must either
pass every check `strategies.server_app.run` makes before it waits for nodes, or raise a
ConfigError whose parameter is one of the config's keys, never a traceback from deep inside
numpy, networkx, flwr-datasets or torch. A sample of the accepted ones really runs. The
tables below are also run one bad value at a time, each on its own, so that every value
listed as invalid is known to be refused by the key it belongs to.

The values RunConfig itself checks come from its table (`fedcoop.config.SETTINGS`): each
key's constraint gives its edge values and the strategies that draw valid and invalid ones,
so these tests follow the table as it changes. Only what the table cannot say is listed by
hand: values small enough to run, and values that the run refuses later (an algorithm's
alpha range, a registry's names, a parser's syntax, a key that clashes with another).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedcoop import algorithms, mixing, topology, workload
from fedcoop.config import SETTINGS, TYPES, RunConfig
from fedcoop.constraints import Constraint, Interval, IntRange, Names, NumberOr, Registry
from fedcoop.errors import ConfigError
from fedcoop.spec import CooperativeSpec
from tests.conftest import MATRIX_KEYS, TINY, named_key, run_tiny

NAN, INF = math.nan, math.inf


def names(key: str) -> list[str]:
    """The names the table lists for `key` (its OneOf or its registry)."""
    constraint = SETTINGS[key].constraint
    assert isinstance(constraint, Names), f"{key} has no list of names"
    return list(constraint.names())


def valid_values(constraint: Constraint | None) -> st.SearchStrategy[Any] | None:
    """Values `constraint` accepts, drawn over its whole range (None: the table cannot say
    which, e.g. what a parser accepts)."""
    match constraint:
        case IntRange(low=low, high=high):
            return st.integers(low, high)
        case Interval():
            return st.floats(
                constraint.low,
                constraint.high,
                exclude_min=not constraint.closed_low,
                exclude_max=not constraint.closed_high,
            )
        case Names():
            return st.sampled_from(constraint.names())
        case NumberOr(words=words):
            return st.sampled_from(words) | st.floats() | st.integers()
    return None


def invalid_values(constraint: Constraint | None) -> st.SearchStrategy[Any] | None:
    """Values of the key's type that `constraint` refuses: beyond either bound, NaN, or a
    name it does not list (None: nothing RunConfig itself refuses, or no way to draw it)."""
    match constraint:
        case Registry():
            return None  # checked when the run resolves the name, not by RunConfig
        case IntRange(low=low, high=high):
            above = st.nothing() if high is None else st.integers(min_value=high + 1)
            return st.integers(max_value=low - 1) | above
        case Interval(low=low, high=high):
            below = st.floats(max_value=low if not constraint.closed_low else _down(low))
            if math.isinf(high):
                above = st.nothing() if constraint.closed_high else st.just(INF)
            else:
                above = st.floats(min_value=high if not constraint.closed_high else _up(high))
            return below | above | st.just(NAN)
        case Names():
            return st.text().filter(lambda text: text not in constraint.names())
        case NumberOr(words=words):
            return st.text().filter(lambda text: text not in words)
    return None


def _down(x: float) -> float:
    return math.nextafter(x, -INF)


def _up(x: float) -> float:
    return math.nextafter(x, INF)


#: Values of the wrong type for each field type, which from_mapping refuses.
WRONG_TYPE: dict[Any, list[Any]] = {
    bool: ["yes", 1, None],
    int: [2.5, "1", True, None],
    float: ["0.1", False, None],
    str: [3, None],
    float | str: [True, None],
}


def edge_values(key: str) -> list[Any]:
    """The values just outside `key`'s declared range, and of the wrong type."""
    constraint = SETTINGS[key].constraint
    match constraint:
        case Registry():
            edges: list[Any] = []
        case IntRange(low=low, high=high):
            edges = [low - 1] + ([] if high is None else [high + 1])
        case Interval(low=low, high=high):
            edges = [low if not constraint.closed_low else _down(low), NAN]
            if not constraint.closed_high:
                edges.append(high)
            elif not math.isinf(high):
                edges.append(_up(high))
        case Names() | NumberOr():
            edges = ["nope"]
        case _:
            edges = []
    return edges + WRONG_TYPE[TYPES[key.replace("-", "_")]]


#: Matrix files that the "matrix-file" values below name, created once per module.
MATRIX_FILES = {
    "ring4.npy": topology.weigh("metropolis-hastings", topology.ring(4)),
    "easgd3.csv": mixing.easgd(3, 0.3),
}

#: Values each key accepts on its own (some only with the right other keys).
VALID: dict[str, list[Any]] = {
    "algorithm": names("algorithm"),
    "num-clients": [1, 2, 3, 4, 8],
    "num-rounds": [1, 2],
    "tau": [1, 2, 3.0],
    "lr": [0.01, 0.05, 1],
    "momentum": [0, 0.5, 0.9],
    "nesterov": [False, True],
    "weight-decay": [0, 1e-4],
    "batch-size": [0, 4, 32],
    "alpha": ["auto", 0.1, 0.3, 0.6],
    "anchor-momentum": ["auto", 0, 0.5],
    "topology": names("topology"),
    "weighting": names("weighting"),
    "groups": [1, 2, 3],
    "update-rule": names("update-rule"),
    "matrix-file": ["", *MATRIX_FILES],
    "num-aux": [0, 1],
    "test-fraction": [0.2, 0.5],
    "synthetic-alpha": [0, 1.0],
    "synthetic-beta": [0.5],
    "partition": names("partition"),
    "dirichlet-alpha": [0.5, 10],
    "classes-per-partition": [1, 2],
    "major-fraction": [0.64, 1],
    "shards-per-partition": [1, 2],
    "lr-schedule": names("lr-schedule"),
    "warmup-epochs": [0, 5],
    "decay-epochs": ["150,250", "1", ""],
    "decay-factor": [0.1, 1],
    "scale-lr-by-workers": [False, True],
    "seed": [0, 1, 7],
    "results-dir": [""],
    "round-timeout": [600, 5],
    "step-time": [0, 0.05],
    "step-time-distribution": names("step-time-distribution"),
    "step-time-sigma": [0, 0.5],
    "participation": [0.5, 1],
    "round-deadline": [0, 30],
    "quorum": [0.5, 1],
    "update-norm-bound": [0, 3],
    "checkpoint-every": [0, 1, 5],
    "eager-reply": [False, True],
    "tau-schedule": ["fixed", "adacomm", "2,1"],
    "adacomm-interval": [1, 10.0],
    "topology-schedule": ["fixed", "random-matching", "random-edge"],
    "comm-budget": [0.25, 1],
}
#: (data set, model) pairs that go together, drawn as one so that a config that names only one
#: of them never trips over the other's default.
DATA: list[dict[str, Any]] = [
    {"dataset": "least-squares", "model": "linear"},
    {"dataset": "mnist-embedded", "model": "cnn"},
    {"dataset": "mnist-embedded", "model": "mlp"},
    {"dataset": "synthetic", "model": "logreg"},
    {"dataset": "synthetic-iid", "model": "mlp"},
]
#: Values each key refuses whatever the other keys say (in the CONTEXT of keys that are read
#: by some algorithms only) that the table cannot give: what a registry, an algorithm, a
#: parser or another key refuses, and unknown keys.
REFUSED_LATER: dict[str, list[Any]] = {
    "algorithm": ["nope", "EASGD", ""],
    "alpha": [-0.1, 0, NAN, INF, 1],
    "anchor-momentum": [1, -0.5, NAN],
    "groups": [9],
    "update-rule": ["late"],
    "matrix-file": ["", "missing.npy", "words.csv"],
    "dataset": ["imagenet", ""],
    "model": ["transformer", "linear"],
    "partition": ["random", "pathological"],
    "classes-per-partition": [11],
    "shards-per-partition": [10**6],
    "decay-epochs": ["250,150", "5,5", "x", "0,5", "nan", "inf", "1"],
    "link": ["fast", "10ms/0mbit", "50ms"],
    "eager-reply": [True],
    "tau-schedule": ["0,2", "often", "", "2,-1"],
    "topology-schedule": ["missing.npz", "ring"],
    "learning-rate": [0.1],
    "num_client": [4],
    "Tau": [2],
}
#: Every value to refuse: each key's edges from the table, then those refused later.
INVALID: dict[str, list[Any]] = {
    key: edge_values(key) + REFUSED_LATER.get(key, []) for key in SETTINGS
} | {key: values for key, values in REFUSED_LATER.items() if key not in SETTINGS}
#: The other keys under which an INVALID value is read at all: num-aux and the matrix file
#: only matter for the cooperative algorithm, alpha only for one with an elastic anchor.
CONTEXT: dict[str, dict[str, Any]] = {
    "alpha": {"algorithm": "easgd"},
    "groups": {"algorithm": "hierarchical"},
    "matrix-file": {"algorithm": "cooperative", "num-clients": 4},
    "num-aux": {"algorithm": "cooperative", "matrix-file": "ring4.npy", "num-clients": 4},
    "synthetic-alpha": {"dataset": "synthetic", "model": "logreg"},
    "partition": {"dataset": "least-squares", "model": "linear"},
    "classes-per-partition": {"partition": "pathological"},
    "shards-per-partition": {"partition": "shards"},
    "dirichlet-alpha": {"partition": "dirichlet"},
    "decay-epochs": {"lr-schedule": "paper"},
    "eager-reply": {"algorithm": "local-sgd"},
    "topology-schedule": {"algorithm": "dpsgd"},
}


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the files that the "matrix-file" values name."""
    folder = tmp_path_factory.mktemp("matrices")
    for name, w in MATRIX_FILES.items():
        if name.endswith(".npy"):
            np.save(folder / name, w)
        else:
            np.savetxt(folder / name, w, delimiter=",")
    (folder / "words.csv").write_text("a,b\nc,d\n")
    return folder


def with_files(values: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """`values` with a matrix-file name turned into its path in `folder`."""
    name = values.get("matrix-file")
    named = isinstance(name, str) and name
    return {**values, "matrix-file": str(folder / name)} if named else dict(values)


def assert_names_a_key(error: ConfigError, values: Mapping[str, Any]) -> None:
    """The error names a config key (the defaults can clash with `values` too) or the user
    matrix, then its value and what is valid."""
    keys = {named_key(k) for k in values} | set(RunConfig().to_mapping())
    keys |= MATRIX_KEYS if values.get("algorithm") == "cooperative" else set()
    assert named_key(error.parameter) in keys, f"{error} names no key of {dict(values)}"
    assert str(error).startswith(f"{error.parameter}={error.value!r} is invalid: ")
    assert error.valid


def checked(values: Mapping[str, Any]) -> tuple[RunConfig, CooperativeSpec] | ConfigError:
    """Every check that the server runs before it waits for nodes: the parsed config and its
    spec, or the ConfigError (whose parameter must be a key)."""
    try:
        config = RunConfig.from_mapping(values)
        spec = algorithms.resolve(config)
        workload.partition_indices(config, config.num_clients)
        workload.build_model(config)
    except ConfigError as error:
        assert_names_a_key(error, values)
        return error
    # The clients build their schedule only once training runs: too late for a ConfigError.
    workload.schedule(config)
    assert spec.num_workers == config.num_clients
    assert np.all(np.isfinite(spec.w))
    np.testing.assert_allclose(spec.w.sum(axis=0), 1.0, atol=1e-9)
    return config, spec


def bad_cases() -> Iterator[tuple[str, Any]]:
    """Every (key, value) of INVALID."""
    return ((key, value) for key, values in INVALID.items() for value in values)


@pytest.mark.parametrize(("key", "value"), list(bad_cases()))
def test_each_invalid_value_is_refused_naming_its_key(
    key: str, value: Any, matrix_dir: Path
) -> None:
    outcome = checked(with_files({**CONTEXT.get(key, {}), key: value}, matrix_dir))
    assert isinstance(outcome, ConfigError), f"{key}={value!r} was accepted"
    assert named_key(outcome.parameter) == named_key(key)


def test_the_hand_picked_valid_values_lie_inside_the_table() -> None:
    for key, values in VALID.items():
        constraint = SETTINGS[key].constraint
        assert constraint is None or all(constraint.accepts(v) for v in values), key


#: The keys whose values RunConfig checks against a constraint that can be drawn from.
DRAWN = sorted(
    key
    for key, setting in SETTINGS.items()
    if invalid_values(setting.constraint) is not None
    and valid_values(setting.constraint) is not None
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data(), key=st.sampled_from(DRAWN))
def test_values_drawn_from_the_table_are_accepted_or_refused_as_it_says(
    data: st.DataObject, key: str
) -> None:
    constraint = SETTINGS[key].constraint
    good, bad = valid_values(constraint), invalid_values(constraint)
    assert constraint is not None and good is not None and bad is not None
    value = data.draw(good, label="valid")
    parsed = RunConfig.from_mapping({key: value}).to_mapping()[key]
    assert parsed == value or parsed != parsed  # NaN: alpha takes any number
    value = data.draw(bad, label="invalid")
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({key: value})
    assert error.value.parameter == key
    assert error.value.valid == f"must be {constraint.describe()}"


@st.composite
def configs(
    draw: st.DrawFn, valid: Mapping[str, list[Any]] = VALID, max_bad: int = 2
) -> dict[str, Any]:
    """Some keys at a valid value, and up to `max_bad` keys at an invalid one."""
    present = draw(st.lists(st.sampled_from(sorted(valid)), max_size=len(valid) // 3, unique=True))
    values = draw(st.sampled_from(DATA)) | {
        key: draw(st.sampled_from(valid[key])) for key in present
    }
    bad = draw(st.lists(st.sampled_from(sorted(INVALID)), max_size=max_bad, unique=True))
    return values | {key: draw(st.sampled_from(INVALID[key])) for key in bad}


@pytest.mark.parametrize(
    ("values", "key", "valid"),
    [
        ({"algorithm": "dpsgd", "num-clients": 1}, "num-clients", "a graph needs two nodes"),
        (
            {"algorithm": "generalized-elastic", "topology": "hypercube", "num-clients": 6},
            "num-clients",
            "a hypercube needs n to be a power of 2",
        ),
        ({"algorithm": "dpsgd", "topology": "torus", "num-clients": 7}, "num-clients", "rows"),
        ({**TINY, "num-clients": 200}, "num-clients", "1..162 (the number of samples)"),
        ({"partition": "random"}, "partition", "one of iid, dirichlet"),
        (
            {"lr-schedule": "paper", "warmup-epochs": 10, "decay-epochs": "5,20"},
            "decay-epochs",
            "warmup-epochs = 10",
        ),
    ],
)
def test_values_that_clash_with_other_keys_name_the_key_to_change(
    values: dict[str, Any], key: str, valid: str
) -> None:
    outcome = checked(values)
    assert isinstance(outcome, ConfigError) and outcome.parameter == key
    assert valid in outcome.valid


@settings(max_examples=200, deadline=None, derandomize=True)
@given(values=configs())
def test_every_config_passes_the_checks_or_names_a_key(
    values: dict[str, Any], matrix_dir: Path
) -> None:
    checked(with_files(values, matrix_dir))


#: What a run of the property below may vary: everything but the data set and its size.
RUNNABLE = {
    key: values
    for key, values in VALID.items()
    if key not in {*TINY, "algorithm", "num-clients", "num-rounds", "partition"}
} | {"num-clients": [2, 3, 4], "num-rounds": [1, 2], "lr": [0.01, 0.05]}
#: The cooperative algorithm needs matching matrix files; test_matrix_properties runs those.
RUN_ALGORITHMS = [name for name in algorithms.ALGORITHMS if name != "cooperative"]


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(algorithm=st.sampled_from(RUN_ALGORITHMS), values=configs(RUNNABLE, max_bad=0))
def test_accepted_tiny_configs_run_to_finite_metrics(
    algorithm: str, values: dict[str, Any], matrix_dir: Path
) -> None:
    values = with_files({**values, "algorithm": algorithm, **TINY}, matrix_dir)
    outcome = checked(values)
    assume(not isinstance(outcome, ConfigError))
    run_tiny(values)


@pytest.mark.parametrize(
    ("algorithm", "m", "alpha", "bound"),
    [
        ("easgd", 8, 0.25, "EASGD needs 0 < alpha < 2/(m+1) = 0.2222 for m=8"),
        ("eamsgd", 4, -0.1, "EASGD needs 0 < alpha < 2/(m+1) = 0.4000 for m=4"),
        ("generalized-elastic", 4, 0.4, "0 < alpha < 2/(m+1) = 0.4000 for m=4"),
        ("overlap", 8, 1.0, "0 < alpha < 1"),
        ("hierarchical", 4, 0.5, "0 < alpha < 1/2 (the largest group size) = 0.5000"),
    ],
)
def test_alpha_out_of_range_names_the_bound_with_its_number(
    algorithm: str, m: int, alpha: float, bound: str
) -> None:
    outcome = checked({"algorithm": algorithm, "num-clients": m, "alpha": alpha})
    assert isinstance(outcome, ConfigError) and outcome.parameter == "alpha"
    assert bound in str(outcome) and f"alpha={alpha!r}" in str(outcome)


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 40))
algorithm_keys = st.fixed_dictionaries(
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


@settings(max_examples=300, deadline=None, derandomize=True)
@given(algorithm_keys)
def test_any_numbers_for_the_algorithm_keys_resolve_or_name_a_key(values: dict[str, Any]) -> None:
    try:
        spec = algorithms.resolve(RunConfig.from_mapping(values))
    except ConfigError as error:
        assert_names_a_key(error, values)
        return
    assert spec.num_workers == values["num-clients"]
    assert np.all(np.isfinite(spec.w))
    np.testing.assert_allclose(spec.w.sum(axis=0), 1.0, atol=1e-9)
