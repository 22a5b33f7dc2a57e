"""Print (and optionally plot) the per-client class histogram a run config produces.

    fedcoop histogram partition=skewed num-clients=16
    fedcoop histogram partition=dirichlet dirichlet-alpha=0.1 --plot split.png

The split shown is exactly the one a run with that config trains on.
"""

from __future__ import annotations

import numpy as np

from fedcoop import partitions, workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError


def class_counts(config: RunConfig) -> np.ndarray | None:
    """clients x classes sample counts of the split `config` trains on (None: regression)."""
    train, _ = workload.load_split(config)
    if train.y.is_floating_point():
        return None
    parts = list(workload.partition_indices(config, config.num_clients))
    return partitions.class_histogram(train.y.numpy(), parts, train.num_classes)


def title(config: RunConfig) -> str:
    """What a histogram of `config`'s split is of."""
    return f"{config.dataset}, {config.partition}, {config.num_clients} clients"


def show(config: RunConfig, plot: str | None = None) -> None:
    """Print the per-client class histogram of `config`; plot it to `plot` if set."""
    hist = class_counts(config)
    if hist is None:
        raise ConfigError("dataset", config.dataset, "has no classes to histogram")
    print(partitions.format_histogram(hist))
    if plot:
        print(f"wrote {partitions.plot_histogram(hist, plot, title(config))}")
