"""Print (and optionally plot) the per-client class histogram a run config produces.

    fedcoop histogram partition=skewed num-clients=16
    fedcoop histogram partition=dirichlet dirichlet-alpha=0.1 --plot split.png

The split shown is exactly the one a run with that config trains on.
"""

from __future__ import annotations

from fedcoop import partitions, workload
from fedcoop.config import RunConfig


def show(config: RunConfig, plot: str | None = None) -> None:
    """Print the per-client class histogram of `config`; plot it to `plot` if set."""
    train, _ = workload.load_split(config)
    parts = list(workload.partition_indices(config, config.num_clients))
    hist = partitions.class_histogram(train.y.numpy(), parts, train.num_classes)
    print(partitions.format_histogram(hist))
    if plot:
        title = f"{config.dataset}, {config.partition}, {config.num_clients} clients"
        print(f"wrote {partitions.plot_histogram(hist, plot, title)}")
