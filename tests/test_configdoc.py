"""docs/configuration.md is generated from RunConfig and must not drift from it."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedcoop.config import MAX_CLIENTS, MAX_SEED, SETTINGS, RunConfig
from fedcoop.errors import ConfigError
from simulations import configdoc

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_page_is_what_the_generator_writes() -> None:
    assert PAGE.read_text() == configdoc.render(), (
        "docs/configuration.md is out of date with fedcoop.config.RunConfig; regenerate it: "
        "python -m simulations.configdoc > docs/configuration.md"
    )


def test_every_field_has_one_row_with_a_meaning_and_valid_values() -> None:
    rows = list(configdoc.entries())
    keys = [row.key for row in rows]
    assert keys == [f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)]
    assert all(row.type and row.meaning and row.valid for row in rows)
    assert sum(f"| `{key}` |" in PAGE.read_text() for key in keys) == len(keys)


def test_meanings_are_the_fields_declared_docs() -> None:
    meaning = {row.key: row.meaning for row in configdoc.entries()}
    assert meaning == {key: setting.doc for key, setting in SETTINGS.items()}
    assert meaning["alpha"].startswith("pullback / elasticity;")
    assert meaning["alpha"].endswith("EASGD needs 0 < alpha < 2/(m+1)")
    assert "pullback" not in meaning["anchor-momentum"]


def test_the_defaults_column_parses_back_to_the_dataclass_defaults() -> None:
    defaults = {row.key: tomllib.loads(f"v = {row.default}")["v"] for row in configdoc.entries()}
    assert RunConfig.from_mapping(defaults) == RunConfig()


def test_valid_values_are_the_bounds_the_checks_enforce() -> None:
    valid = {row.key: row.valid for row in configdoc.entries()}
    assert str(MAX_CLIENTS) in valid["num-clients"] and str(MAX_SEED) in valid["seed"]
    assert valid["tau"] == "an integer >= 1"
    assert valid["participation"] == "in (0, 1]"
    assert valid["momentum"] == "in [0, 1)"
    assert valid["round-timeout"] == "> 0 seconds"  # infinity is fine: no timeout
    assert "wifi" in valid["link"] and "lognormal" in valid["step-time-distribution"]
    assert "overlap" in valid["algorithm"] and "skewed" in valid["partition"]
    assert valid["nesterov"] == "needs momentum > 0"
    assert valid["decay-epochs"].startswith("strictly rising positive epochs")
    assert 'with lr-schedule "paper": each epoch >= warmup-epochs' in valid["decay-epochs"]
    # No constraint: any value of the type from_mapping accepts.
    assert valid["matrix-file"] == "any string"
    assert valid["eager-reply"] == "any boolean"


@pytest.mark.parametrize(
    ("key", "value"),
    [("tau", 0), ("lr", 0), ("comm-budget", 1.5), ("seed", -1), ("topology", "mesh")],
)
def test_the_page_and_the_error_say_the_same(key: str, value: object) -> None:
    valid = {row.key: row.valid for row in configdoc.entries()}
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({key: value})
    assert error.value.valid == f"must be {valid[key]}"


def test_types_are_the_annotations() -> None:
    types = {row.key: row.type for row in configdoc.entries()}
    assert types["tau"] == "integer" and types["lr"] == "float"
    assert types["nesterov"] == "boolean" and types["link"] == "string"
    assert types["alpha"] == "float or string"
