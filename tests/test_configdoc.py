"""docs/configuration.md is generated from RunConfig and must not drift from it."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from fedcoop.config import MAX_CLIENTS, MAX_SEED, RunConfig
from simulations import configdoc

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_page_is_what_the_generator_writes() -> None:
    assert PAGE.read_text() == configdoc.render(), (
        "docs/configuration.md is out of date with fedcoop.config.RunConfig; regenerate it: "
        "python -m simulations.configdoc > docs/configuration.md"
    )


def test_every_field_has_one_row_with_a_meaning_and_valid_values() -> None:
    rows = list(configdoc.entries())
    keys = [key for key, *_ in rows]
    assert keys == [f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)]
    assert all(meaning and valid for _, _, meaning, valid in rows)
    assert sum(f"| `{key}` |" in PAGE.read_text() for key in keys) == len(keys)


def test_multi_line_comments_are_joined_and_a_blank_line_ends_one() -> None:
    docs = configdoc.field_docs()
    assert docs["alpha"].startswith("pullback / elasticity;")
    assert docs["alpha"].endswith("EASGD needs 0 < alpha < 2/(m+1)")
    assert "pullback" not in docs["anchor_momentum"]


def test_the_defaults_column_parses_back_to_the_dataclass_defaults() -> None:
    defaults = {key: tomllib.loads(f"v = {toml}")["v"] for key, toml, *_ in configdoc.entries()}
    assert RunConfig.from_mapping(defaults) == RunConfig()


def test_valid_values_are_the_bounds_the_checks_enforce() -> None:
    valid = {key: text for key, _, _, text in configdoc.entries()}
    assert str(MAX_CLIENTS) in valid["num-clients"] and str(MAX_SEED) in valid["seed"]
    assert valid["tau"] == "must be an integer >= 1"
    assert valid["participation"] == "must be in (0, 1]"
    assert valid["momentum"] == "must be in [0, 1)"
    assert "wifi" in valid["link"] and "lognormal" in valid["step-time-distribution"]
    assert "`overlap`" in valid["algorithm"] and "`skewed`" in valid["partition"]
    # No range check: the type from_mapping accepts.
    assert valid["matrix-file"] == "must be a string"
    assert valid["eager-reply"] == "must be true or false"
