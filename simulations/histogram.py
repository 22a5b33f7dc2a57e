"""Print (and optionally plot) the per-client class histogram a run config produces.

    fedcoop histogram partition=skewed num-clients=16
    fedcoop histogram partition=dirichlet dirichlet-alpha=0.1 --plot split.png

Arguments are run-config keys as `key=value` (the same keys as --run-config), so the split
shown is exactly the one a run with that config trains on.
"""

from __future__ import annotations

import tomllib

from fedcoop import partitions, workload
from fedcoop.config import RunConfig


def parse_overrides(pairs: list[str]) -> RunConfig:
    """`key=value` pairs, values in TOML syntax (strings may omit their quotes)."""
    values = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return RunConfig.from_mapping(values)


def show(overrides: list[str], plot: str | None = None) -> None:
    """Print the histogram of the config that `overrides` give; plot it to `plot` if set."""
    config = parse_overrides(overrides)
    train, _ = workload.load_split(config)
    parts = list(workload.partition_indices(config, config.num_clients))
    hist = partitions.class_histogram(train.y.numpy(), parts, train.num_classes)
    print(partitions.format_histogram(hist))
    if plot:
        title = f"{config.dataset}, {config.partition}, {config.num_clients} clients"
        print(f"wrote {partitions.plot_histogram(hist, plot, title)}")
