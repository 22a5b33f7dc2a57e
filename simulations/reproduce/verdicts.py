"""What every claim shares: its record (Claim), the verdict rule, and how numbers, tables and
figures are written into the report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from simulations import plots, stats

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
#: the verdict of a claim whose every check stays inside the seeds' noise
INSIDE_NOISE = "inside the noise"
#: one check's outcome: the claimed difference beyond noise, inside it, or the opposite one
HOLDS, NOISE, CONTRADICTED = "holds", "inside the noise", "contradicted"
#: how every criterion states the rule its checks use
RULE = (
    "a difference counts when |mean difference| > 2 combined standard errors over the seeds "
    "(simulations.stats.differs)"
)
#: the rule of checks between configs that share their seeds (data, initial model, batches)
RULE_PAIRED = (
    "a difference counts when the mean of the seed-by-seed differences exceeds 2 of its "
    "standard errors (std of the differences / sqrt(n): simulations.stats.differs_paired; "
    "each seed is one data set, initial model and batch order shared by every config)"
)


@dataclass
class Claim:
    """One claim of a paper, its evidence and the verdict its criterion gives."""

    title: str
    paper: str
    setup: str
    criterion: str
    verdict: str
    tables: list[str]
    figures: list[Path]
    runs: Path
    notes: str = ""


def verdict(hits: int, total: int) -> str:
    """All checks hold: reproduced; at least half: partly; fewer: not reproduced."""
    if total and hits == total:
        return REPRODUCED
    return PARTLY if total and 2 * hits >= total else NOT_REPRODUCED


def above(a: Sequence[float], b: Sequence[float], *, paired: bool = False) -> str:
    """Whether a's mean lies above b's beyond the noise (HOLDS), inside it, or below it;
    `paired`: a and b are by seed, and the noise is that of their differences."""
    difference = (stats.differs_paired if paired else stats.differs)(a, b)
    if difference.verdict != stats.DIFFERS:
        return NOISE
    return HOLDS if difference.delta > 0 else CONTRADICTED


def judge(outcomes: Sequence[str]) -> str:
    """A claim's verdict from its checks' outcomes: every check holds: reproduced; every one
    inside the noise: INSIDE_NOISE (no verdict either way); else partly when at least half
    hold or none is contradicted, not reproduced otherwise."""
    holds, contradicted = outcomes.count(HOLDS), outcomes.count(CONTRADICTED)
    if outcomes and holds == len(outcomes):
        return REPRODUCED
    if outcomes and outcomes.count(NOISE) == len(outcomes):
        return INSIDE_NOISE
    return (
        PARTLY
        if outcomes and (2 * holds >= len(outcomes) or not contradicted)
        else (NOT_REPRODUCED)
    )


def tally(outcomes: Sequence[str]) -> str:
    """How many checks came out each way, for a criterion's text."""
    return ", ".join(f"{outcomes.count(o)} {o}" for o in (HOLDS, NOISE, CONTRADICTED))


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """A table cell: mean ± sample std over the seeds (and n), from stats.spread."""
    s = stats.spread(values)
    return f"{fmt(s.mean, digits)} ± {fmt(s.std, digits)} (n={s.n})"


def fmt(value: float | None, digits: int = 4) -> str:
    """A number as every table writes it (the test reads the files back through this)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def yes(flag: bool) -> str:
    """A check's outcome in a table or criterion."""
    return "yes" if flag else "no"


def describe(config: Mapping[str, Any]) -> str:
    """A setup as the report names it."""
    return ", ".join(f"{k} = {v}" for k, v in config.items())


def save_png(figure: Figure, path: Path) -> Path:
    """Write one PNG (the report embeds PNGs only)."""
    (png,) = plots.save(figure, path, formats=("png",), dpi=120)
    return png
