"""The `fedcoop` command line: theory for a config, and its data split.

    fedcoop analyze algorithm=easgd num-clients=8
    fedcoop analyze algorithm=overlap tau=2 --t-comm 0.3 --t-step 0.05
    fedcoop histogram partition=skewed num-clients=16 --plot split.png

Arguments are run-config keys as `key=value`, exactly as `flwr run --run-config` takes them.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from fedcoop.analysis import analyze
from fedcoop.errors import ConfigError
from simulations import histogram


def _analyze(args: argparse.Namespace) -> None:
    config = histogram.parse_overrides(args.overrides)
    findings = analyze(config, L=args.L, sigma2=args.sigma2, t_comm=args.t_comm, t_step=args.t_step)
    table = Table(title=f"{config.algorithm}: m={config.num_clients}, lr={config.lr}")
    for column in ("quantity", "value", "from"):
        table.add_column(column)
    for f in findings:
        table.add_row(f.name, f"{f.value:.6g}", f.source)
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedcoop", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    theory = commands.add_parser("analyze", help="what the papers predict for a config")
    theory.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    theory.add_argument("--L", type=float, default=1.0, help="smoothness constant")
    theory.add_argument("--sigma2", type=float, default=1.0, help="gradient noise variance")
    theory.add_argument("--t-comm", type=float, help="seconds one averaging takes")
    theory.add_argument("--t-step", type=float, help="seconds one local step takes")
    split = commands.add_parser("histogram", help="per-client class histogram of a config")
    split.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    split.add_argument("--plot", help="write the histogram as a PNG or PDF here")
    args = parser.parse_args(argv)
    try:
        if args.command == "analyze":
            _analyze(args)
        else:
            histogram.show(args.overrides, args.plot)
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
