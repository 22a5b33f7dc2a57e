"""What every claim shares: its record (Claim), the verdict rule, and how numbers, tables and
figures are written into the report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from simulations import plots

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"


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
