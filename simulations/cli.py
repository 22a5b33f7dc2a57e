"""The `fedcoop` command line: run a config, its theory, and its data split.

    fedcoop run algorithm=overlap tau=2 num-clients=8
    fedcoop run --config simulations/experiments/fedprox-synthetic.toml num-rounds=10
    fedcoop analyze algorithm=easgd num-clients=8
    fedcoop analyze algorithm=overlap tau=2 --t-comm 0.3 --t-step 0.05
    fedcoop histogram partition=skewed num-clients=16 --plot split.png

Arguments are run-config keys as `key=value`, exactly as `flwr run --run-config` takes them;
`--config FILE.toml` reads them from a file first.
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path

import torch
from flwr.simulation import run_simulation
from rich.console import Console
from rich.table import Table

from clients.client_app import app as client_app
from fedcoop.analysis import analyze
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from simulations import histogram
from strategies.cooperative import RunResult
from strategies.server_app import make_server_app


def _config(args: argparse.Namespace) -> RunConfig:
    """The config a command line describes: the --config file, then key=value overrides."""
    values = tomllib.loads(Path(args.config).read_text()) if args.config else {}
    for pair in args.overrides:
        key, _, raw = pair.partition("=")
        try:  # TOML syntax, so numbers and booleans keep their types; bare strings too
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return RunConfig.from_mapping(values)


def _run(args: argparse.Namespace) -> None:
    """One config through Flower's simulation engine, as many SuperNodes as num-clients."""
    config = _config(args)
    if args.quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    results: list[RunResult] = []
    run_simulation(
        server_app=make_server_app(config, on_result=results.append),
        client_app=client_app,
        num_supernodes=config.num_clients,
        backend_config={
            "client_resources": {
                "num_cpus": args.cpus_per_client,
                "num_gpus": args.gpus_per_client,
            }
        },
    )
    if not results:
        raise SystemExit("error: the run did not finish; see the log above")
    last = results[0].rounds[-1]
    summary = ", ".join(
        f"{k} {last[k]:.4f}" for k in ("train-loss", "test-loss", "test-accuracy") if k in last
    )
    print(f"{config.algorithm}: round {last['round']}: {summary}")


def _analyze(args: argparse.Namespace) -> None:
    config = _config(args)
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
    simulate = commands.add_parser("run", help="run a config in Flower's simulation engine")
    simulate.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    simulate.add_argument("--config", help="a TOML file of run-config keys")
    simulate.add_argument("--quiet", action="store_true", help="no per-round log")
    simulate.add_argument("--cpus-per-client", type=float, default=1.0)
    simulate.add_argument(
        "--gpus-per-client",
        type=float,
        default=0.25 if torch.cuda.is_available() else 0.0,
        help="GPU share per simulated client (0.25 when a GPU is present)",
    )
    theory = commands.add_parser("analyze", help="what the papers predict for a config")
    theory.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    theory.add_argument("--config", help="a TOML file of run-config keys")
    theory.add_argument("--L", type=float, default=1.0, help="smoothness constant")
    theory.add_argument("--sigma2", type=float, default=1.0, help="gradient noise variance")
    theory.add_argument("--t-comm", type=float, help="seconds one averaging takes")
    theory.add_argument("--t-step", type=float, help="seconds one local step takes")
    split = commands.add_parser("histogram", help="per-client class histogram of a config")
    split.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    split.add_argument("--config", help="a TOML file of run-config keys")
    split.add_argument("--plot", help="write the histogram as a PNG or PDF here")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "analyze":
            _analyze(args)
        else:
            histogram.show(_config(args), args.plot)
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
