"""Running a claim's configs into its compare directory and finding runs among them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcoop.config import RunConfig
from simulations import compare


def steps_configs(
    base: Mapping[str, Any], steps: int, taus: Sequence[int], grid: Mapping[str, Sequence[Any]]
) -> list[RunConfig]:
    """The grid at every tau, each run taking `steps` local steps (steps / tau rounds), so
    that runs over tau compare at equal computation as the papers' figures do."""
    return [
        config
        for tau in taus
        for config in compare.expand({**base, "tau": tau, "num-rounds": steps // tau}, grid)
    ]


def run_claim(configs: Sequence[RunConfig], out: Path) -> list[compare.RecordedRun]:
    """Run `configs` in process into the compare directory `out` with its summary files, and
    return the runs as read back from disk."""
    compare.sweep(
        [c.replace(checkpoint_every=0) for c in configs], out, engine="inprocess", quiet=True
    )
    runs = compare.load_runs(out)
    compare.write_summary(out, compare.summarize(runs, None), None)
    return runs


def find(runs: Sequence[compare.RecordedRun], **values: Any) -> compare.RecordedRun:
    """The one run whose config has these values (dashed keys given with underscores)."""
    wanted = {k.replace("_", "-"): v for k, v in values.items()}
    (run,) = [r for r in runs if all(r.config[k] == v for k, v in wanted.items())]
    return run
