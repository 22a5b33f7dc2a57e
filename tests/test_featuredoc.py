"""docs/algorithm-features.md is what resolving each algorithm with each feature gives."""

from __future__ import annotations

from pathlib import Path

from fedcoop import algorithms
from simulations import featuredoc

PAGE = Path(__file__).resolve().parents[1] / "docs" / "algorithm-features.md"


def test_the_committed_page_is_what_the_generator_writes() -> None:
    assert PAGE.read_text() == featuredoc.render(), (
        "regenerate: python -m simulations.featuredoc > docs/algorithm-features.md"
    )


def test_the_round_time_column_is_the_registrys_declaration() -> None:
    """The cells come from resolve; the registry's flag says the same for every algorithm."""
    rows = [line for line in PAGE.read_text().splitlines() if line.startswith("| `")]
    column = list(featuredoc.FEATURES).index("round-time (tau_i)") + 2
    for line in rows:
        cells = [c.strip() for c in line.split("|")]
        name = cells[1].strip("`")
        if name in algorithms.ALGORITHMS:
            expected = algorithms.ALGORITHMS[name].heterogeneous_steps
            assert (cells[column] == "yes") == expected, name
