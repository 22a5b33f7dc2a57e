"""Print (and optionally plot) the per-client class histogram a run config produces.

    python -m simulations.histogram partition=skewed num-clients=16
    python -m simulations.histogram partition=dirichlet dirichlet-alpha=0.1 --plot split.png

Arguments are run-config keys as `key=value` (the same keys as --run-config), so the split
shown is exactly the one a run with that config trains on.
"""

from __future__ import annotations

import argparse
import tomllib

from fedcoop import partitions, workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    parser.add_argument("--plot", help="write the histogram as a PNG or PDF here")
    args = parser.parse_args(argv)
    try:
        config = parse_overrides(args.overrides)
        train, _ = workload.load_split(config)
        parts = list(workload.partition_indices(config, config.num_clients))
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    hist = partitions.class_histogram(train.y.numpy(), parts, train.num_classes)
    print(partitions.format_histogram(hist))
    if args.plot:
        title = f"{config.dataset}, {config.partition}, {config.num_clients} clients"
        print(f"wrote {partitions.plot_histogram(hist, args.plot, title)}")


if __name__ == "__main__":
    main()
