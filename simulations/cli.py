"""The `fedcoop` command line: run or compare configs, plot results, theory, data split.

The console script `fedcoop` (pyproject's [project.scripts]) is `main` here, in the top
layer: it drives the experiment runner, compare and plots of `simulations` and the
deployment helper of `deploy`, which the layers below may not import.

    fedcoop run algorithm=overlap tau=2 num-clients=8
    fedcoop run --engine inprocess dataset=least-squares model=linear num-rounds=5
    fedcoop compare --grid algorithm=overlap,local-sgd --grid tau=2,8 --target 0.85 --out cmp
    fedcoop compare --grid tau=2,8 --seeds 3 --out cmp     (mean, std and 95% CI per grid point)
    fedcoop plot cmp
    fedcoop run --config simulations/experiments/fedprox-synthetic.toml num-rounds=10
    fedcoop analyze algorithm=easgd num-clients=8
    fedcoop analyze algorithm=overlap tau=2 --t-comm 0.3 --t-step 0.05
    fedcoop histogram partition=skewed num-clients=16 --plot split.png
    fedcoop run resume=~/fedcoop-runs/overlap-seed0-20261123-101500
    fedcoop deploy --help          (SuperLink, SuperNodes, TLS, node auth: docs/deployment.md)

Arguments are run-config keys as `key=value`, exactly as `flwr run --run-config` takes them;
`--config FILE.toml` reads them from a file first. `compare` sweeps the keys given with
`--grid key=v1,v2` (or `key=[TOML array]` for values that hold commas, such as decay-epochs)
over the fixed ones, each grid point `--seeds N` times (seed, seed+1, ...); in its TOML file a
`[grid]` table holds the swept keys' arrays and a `[compare]` table its options (target, out,
seeds, engine, quiet, cpus-per-client, gpus-per-client, ray-address, processes). `--ray-address
HOST:PORT` runs the simulation engine on an existing Ray cluster (docs/clusters.md).
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError, RunFailed
from simulations.engines import ENGINE_CHOICES

# Each command imports what it needs when it runs (torch, Flower, the data and plotting
# libraries take seconds to import), so that `fedcoop --help` and `fedcoop analyze` start at
# once.

#: `compare` options and their defaults when neither the command line nor [compare] sets them.
COMPARE_OPTIONS: dict[str, Any] = {
    "target": None,
    "out": None,
    "seeds": 1,
    # the faster in-process engine for the config: the Flower path's models
    # (tests/test_equivalence.py), without Ray
    "engine": "auto",
    "quiet": False,
    "cpus-per-client": 1.0,
    "gpus-per-client": None,
    "ray-address": None,
    # the in-process engines: every core (simulations.runner.default_processes)
    "processes": None,
}


def _value(raw: str) -> Any:
    """A value in TOML syntax, so numbers and booleans keep their types; bare strings too."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _pairs(pairs: list[str]) -> dict[str, str]:
    """key=value arguments as raw strings by key."""
    parsed = {}
    for pair in pairs:
        key, equals, raw = pair.partition("=")
        if not equals:
            raise ConfigError("argument", pair, "must be written key=value")
        parsed[key] = raw
    return parsed


def _file(args: argparse.Namespace) -> dict[str, Any]:
    """The --config TOML file's contents (empty without one)."""
    return tomllib.loads(Path(args.config).read_text()) if args.config else {}


def _config(args: argparse.Namespace) -> RunConfig:
    """The config a command line describes: the --config file, then key=value overrides."""
    overrides = {k: _value(raw) for k, raw in _pairs(args.overrides).items()}
    return RunConfig.from_mapping({**_file(args), **overrides})


def _grid_values(raw: str) -> list[Any]:
    """A swept key's values: v1,v2,... or a TOML array, for strings that hold commas."""
    value = _value(raw)
    return value if isinstance(value, list) else [_value(v) for v in raw.split(",")]


def _run(args: argparse.Namespace) -> None:
    """One config on the chosen engine, as many nodes as num-clients."""
    from simulations.runner import run_config

    config = _config(args)
    result = run_config(
        config,
        engine=args.engine,
        quiet=args.quiet,
        cpus_per_client=args.cpus_per_client,
        gpus_per_client=args.gpus_per_client,
        ray_address=args.ray_address,
        processes=args.processes,
    )
    last = result.rounds[-1]
    summary = ", ".join(
        f"{k} {last[k]:.4f}" for k in ("train-loss", "test-loss", "test-accuracy") if k in last
    )
    print(f"{config.algorithm}: round {last['round']}: {summary}")


def _compare_options(args: argparse.Namespace, table: dict[str, Any]) -> dict[str, Any]:
    """compare's options: the command line's, else the [compare] table's, else the defaults."""
    for key in table:
        if key not in COMPARE_OPTIONS:
            raise ConfigError(f"compare.{key}", table[key], f"one of {', '.join(COMPARE_OPTIONS)}")
    given = {k: getattr(args, k.replace("-", "_")) for k in COMPARE_OPTIONS}
    options = {
        k: given[k] if given[k] is not None else table.get(k, COMPARE_OPTIONS[k]) for k in given
    }
    target = options["target"]
    if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ConfigError("target", target, "a test accuracy in (0, 1]")
    return options


def _compare(args: argparse.Namespace) -> None:
    """Run the grid over the fixed keys, then summarize and plot from the files written."""
    from rich.console import Console

    from simulations import compare, plots

    file = _file(args)
    grid = {
        **file.pop("grid", {}),
        **{k: _grid_values(raw) for k, raw in _pairs(args.grid).items()},
    }
    options = _compare_options(args, file.pop("compare", {}))
    fixed = {**file, **{k: _value(raw) for k, raw in _pairs(args.overrides).items()}}
    configs = compare.expand(fixed, grid, seeds=options["seeds"])
    root = Path(configs[0].results_dir or RunConfig().results_dir).expanduser()
    out = compare.sweep(
        configs,
        options["out"] or root / f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
        engine=options["engine"],
        quiet=options["quiet"],
        cpus_per_client=options["cpus-per-client"],
        gpus_per_client=options["gpus-per-client"],
        ray_address=options["ray-address"],
        processes=options["processes"],
    )
    summary = compare.summarize(compare.load_runs(out), options["target"])
    written = compare.write_summary(out, summary, options["target"])
    Console(width=140).print(compare.summary_table(summary, options["target"]))
    _print_written(written + plots.plot_directory(out))


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")


def _analyze(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from fedcoop.analysis import analyze

    config = _config(args)
    findings = analyze(config, L=args.L, sigma2=args.sigma2, t_comm=args.t_comm, t_step=args.t_step)
    table = Table(title=f"{config.algorithm}: m={config.num_clients}, lr={config.lr}")
    for column in ("quantity", "value", "from"):
        table.add_column(column)
    for f in findings:
        table.add_row(f.name, f"{f.value:.6g}", f.source)
    Console(width=120).print(table)


def _engine_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The engine options of run and compare; compare's default to None so that its
    [compare] table can set them."""
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default=defaults["engine"])
    parser.add_argument(
        "--quiet", action="store_true", default=defaults["quiet"], help="no per-round log"
    )
    parser.add_argument("--cpus-per-client", type=float, default=defaults["cpus-per-client"])
    parser.add_argument(
        "--processes",
        type=int,
        default=defaults["processes"],
        help="in-process engines: worker processes training the cohort (default: every core)",
    )
    parser.add_argument(
        "--gpus-per-client",
        type=float,
        default=defaults["gpus-per-client"],
        help="GPU share per simulated client (default: 0.25 with a GPU, else 0)",
    )
    parser.add_argument(
        "--ray-address",
        default=defaults["ray-address"],
        metavar="HOST:PORT",
        help="run the simulation engine on this existing Ray cluster (its head node's "
        "address, or auto) instead of a Ray started here; docs/clusters.md",
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["deploy"]:
        # The deploy helper has its own command tree (and passes flags through to Flower).
        from deploy.cli import main as deploy_main

        deploy_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="fedcoop", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("deploy", help="SuperLink, SuperNodes, TLS and node auth on devices")
    simulate = commands.add_parser("run", help="run a config (Flower's simulation engine)")
    simulate.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    simulate.add_argument("--config", help="a TOML file of run-config keys")
    # one run: the Flower path itself by default (compare defaults to the fastest engine)
    _engine_arguments(simulate, {**COMPARE_OPTIONS, "engine": "simulation"})
    sweep = commands.add_parser("compare", help="run a grid of configs, summarize and plot them")
    sweep.add_argument("overrides", nargs="*", help="fixed run-config key=value pairs")
    sweep.add_argument("--config", help="TOML: run-config keys, [grid] and [compare] tables")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key"
    )
    sweep.add_argument("--target", type=float, help="test accuracy to time (default: none)")
    sweep.add_argument("--out", help="new compare directory (default: results-dir/compare-TIME)")
    sweep.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="runs per grid point, seeds seed..seed+N-1 (default: 1); the summary gives each "
        "figure's mean, std and 95%% CI over them",
    )
    _engine_arguments(sweep, dict.fromkeys(COMPARE_OPTIONS))
    figures = commands.add_parser("plot", help="draw every figure of a run or compare directory")
    figures.add_argument("directory", type=Path)
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
        elif args.command == "compare":
            _compare(args)
        elif args.command == "plot":
            from simulations import plots

            _print_written(plots.plot_directory(args.directory))
        elif args.command == "analyze":
            _analyze(args)
        else:
            from simulations import histogram

            histogram.show(_config(args), args.plot)
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    except RunFailed as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
