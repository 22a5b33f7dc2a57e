"""Running a claim's configs into its compare directory, reusing the runs that already
finished there, and finding runs among them.

A run directory is reused for a config, instead of running the config again, when

- it finished: final.json, which simulations.results writes last, is there (a directory
  with only a checkpoint, or cut short while its results were written, is not), and
- its recorded config (config.json's "config") matches: every run-config key equal, as
  JSON values, to the config about to run (checkpoint-every 0 included, as every run here
  has it), except the keys compare.NOT_SETTINGS names (results-dir and resume), which say
  where files are rather than what is run. A key only one side has is a mismatch, so runs
  recorded before a new config key existed run again.

So an interrupted or extended reproduction given the same --runs folder runs only the
configs no finished run covers; a changed setting runs again exactly the runs it changes.
The code is not compared: after changing how a run computes, start a new runs folder. A
reused directory serves one config only. Nothing is deleted: unfinished directories and runs
that match no config of the grid stay in the folder, ignored (its summary.json names the runs
the report used).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcoop.config import RunConfig
from fedcoop.errors import RunFailed
from simulations import compare, results
from simulations.engines import AUTO
from simulations.runner import run_config


def steps_configs(
    base: Mapping[str, Any],
    steps: int,
    taus: Sequence[int],
    grid: Mapping[str, Sequence[Any]],
    seeds: int,
) -> list[RunConfig]:
    """The grid at every tau and seed 0..seeds-1, each run taking `steps` local steps
    (steps / tau rounds), so that runs over tau compare at equal computation as the papers'
    figures do. Seed-major: every grid point's seed 0 runs before any seed 1, so a run cut
    short still holds whole seeds of the grid."""
    return [
        config
        for seed in range(seeds)
        for tau in taus
        for config in compare.expand(
            {**base, "seed": seed, "tau": tau, "num-rounds": steps // tau}, grid
        )
    ]


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config as JSON values (as config.json holds it), without the location keys."""
    values = json.loads(json.dumps(dict(config)))
    return {k: v for k, v in values.items() if k not in compare.NOT_SETTINGS}


def finished_runs(directory: Path) -> list[compare.RecordedRun]:
    """The runs under `directory` that wrote their final results, by name."""
    return [
        compare.load_run(p) for p in sorted(directory.glob("*/")) if (p / "final.json").is_file()
    ]


class ClaimRuns:
    """One invocation's runs under a runs folder: each claim's configs into its own compare
    directory, finished runs reused, progress printed one line per run."""

    def __init__(self, root: Path, archive: bool = False) -> None:
        """`archive`: shrink each finished run to what reports read (results.archive), the
        form runs are kept in the repository in."""
        self.root = root
        self.archive = archive
        #: how many runs this invocation ran, and how many it found finished and reused
        self.ran = self.reused = 0

    def run_all(
        self, folders: Mapping[str, Sequence[RunConfig]]
    ) -> dict[str, list[compare.RecordedRun]]:
        """Each compare directory's runs, by its name under root (see `run`)."""
        return {
            name: self.run(name, configs, f"claim folder {i} of {len(folders)} ({name})")
            for i, (name, configs) in enumerate(folders.items(), 1)
        }

    def run(
        self, name: str, configs: Sequence[RunConfig], progress: str
    ) -> list[compare.RecordedRun]:
        """Run (or reuse) `configs` in process into root/name, write its summary files, and
        return the runs as read back from disk, in compare.load_runs' order (by name);
        `progress` starts each line printed."""
        out = self.root / name
        out.mkdir(parents=True, exist_ok=True)
        unused = finished_runs(out)
        keys = compare.varying_keys([c.to_mapping() for c in configs])
        runs = []
        for j, config in enumerate(configs, 1):
            config = config.replace(checkpoint_every=0, results_dir=str(out))
            wanted = settings(config.to_mapping())
            head = (
                f"{progress}, run {j} of {len(configs)} "
                f"({compare.label(config.to_mapping(), keys)}):"
            )
            run = next((r for r in unused if settings(r.config) == wanted), None)
            if run is None:
                start = time.perf_counter()
                run = run_in_process(config)
                self.ran += 1
                stopped = f" (stopped: {run.failed[:80]})" if run.failed else ""
                print(f"{head} ran in {time.perf_counter() - start:.1f} s{stopped}", flush=True)
            else:
                unused.remove(run)
                self.reused += 1
                print(f"{head} reused {run.path.name}", flush=True)
            if self.archive:
                results.archive(run.path)
            runs.append(run)
        runs.sort(key=lambda r: r.path.name)
        compare.write_summary(out, compare.summarize(runs, None), None)
        return runs


def run_in_process(config: RunConfig) -> compare.RecordedRun:
    """Run one config (results-dir set) in this process; its run as read back from disk,
    a run that stopped early (every model NaN: it diverged) included, with its `failed`."""
    try:
        result = run_config(config, engine=AUTO, quiet=True)
    except RunFailed as failed:
        if failed.partial is None or failed.partial.directory is None:
            raise
        result = failed.partial
    assert result.directory is not None, "a run with a results-dir writes its results"
    return compare.load_run(result.directory)


def find_all(runs: Sequence[compare.RecordedRun], **values: Any) -> list[compare.RecordedRun]:
    """The runs whose config has these values (dashed keys given with underscores), by seed:
    a grid point's repeats; at least one."""
    wanted = {k.replace("_", "-"): v for k, v in values.items()}
    found = [r for r in runs if all(r.config[k] == v for k, v in wanted.items())]
    if not found:
        raise ValueError(f"no run has {wanted}")
    return sorted(found, key=lambda r: r.config["seed"])


def find(runs: Sequence[compare.RecordedRun], **values: Any) -> compare.RecordedRun:
    """The one run whose config has these values (dashed keys given with underscores)."""
    (run,) = find_all(runs, **values)
    return run
