"""Seconds per round and peak memory of each engine at cross-device scale.

The shape of pfl-research's cross-device benchmark: 1,000 clients of about 50 examples
(Fashion-MNIST's 60,000 training images split IID: 60 each; without Fashion-MNIST installed,
the embedded MNIST's 8,000: 8 each), a cohort of 50 sampled per round (participation 0.05),
one local epoch at batch size 10 (tau = ceil(examples / 10)), FedAvg, the server evaluating the
average every round. The bare PyTorch loop of benchmarks/overhead.py (the same SGD work) and
each engine run in a subprocess of their own, so that each peak RSS is that run's alone: the
peak (VmHWM) of the process that runs the rounds, next to its peak once the benchmark's imports
are done (torch, Flower and torchvision take most of a gigabyte before any data); for the
simulation engine that is the driver (the ServerApp and Flower's engine), and the peak of its
child processes' summed RSS (Ray's: its actors hold the clients), sampled every 0.5 s, is
printed beside it. Every line is `<what> <engine>
<value>`; the last ones are `overhead-ratio <engine> <engine seconds / bare seconds>`.

`--m-sweep` keeps the cohort (50 sampled workers, tau 5 steps of batch 10) and grows the
population, m = 100, 1,000, 10,000, with the logistic regression on Fashion-MNIST (or the
FedProx Synthetic set without it), printing seconds per round per m and `m-ratio <engine>
m=<m> <seconds / seconds at the first m>`: what a round costs beyond the cohort's work.

    python benchmarks/scale.py                           # 1,000 clients, 3 rounds, all engines
    python benchmarks/scale.py --engines vectorized,inprocess --rounds 5
    python benchmarks/scale.py --m-sweep --engines vectorized
    python benchmarks/scale.py --clients 4 --cohort 2 --rounds 1 --tau 2 --model logreg \
        --dataset mnist-embedded --engines vectorized,inprocess           # a smoke run

Every size is a flag; the figures mean something only on a machine nothing else is using.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

from benchmarks.overhead import BARE, engine_arguments, set_threads, timed
from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError

#: what a child prints before its figures, as JSON, so the parent finds them in the output
RESULT = "scale-result "
#: the data set with enough examples for the benchmark, used when its files are found
REAL_DATA = "fashion-mnist"


def dataset_for(requested: str, data_root: str, fallback: str) -> str:
    """--dataset, where "auto" is Fashion-MNIST when its files are found, else `fallback`."""
    if requested != "auto":
        return requested
    try:
        workload.load_split(RunConfig(dataset=REAL_DATA, data_root=data_root))
    except ConfigError:
        return fallback
    return REAL_DATA


def one_epoch(config: RunConfig, epochs: int) -> int:
    """tau for `epochs` passes over a mean shard at the config's batch size."""
    train, _ = workload.load_split(config)
    per_client = len(train) / config.num_clients
    return max(1, epochs * math.ceil(per_client / (config.batch_size or per_client)))


def peak_rss_mib() -> float:
    """This process's peak RSS, VmHWM: unlike getrusage's ru_maxrss, which a child keeps from
    the parent it was forked from, it starts afresh with the program."""
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


class DescendantsRSS(threading.Thread):
    """The peak of the summed RSS of this process's descendants (Ray's processes), sampled
    every `interval` seconds until `stop`; pages they share count once in each."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_mib = interval, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop_event.wait(self.interval):
            total = 0
            for pid in descendants(os.getpid()):
                with contextlib.suppress(OSError):  # it ended while we looked
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            self.peak_mib = max(self.peak_mib, total / 2**20)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_mib


def descendants(root: int) -> list[int]:
    """The pids of the live processes below `root`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def child(engine: str, mapping: dict[str, Any], args: argparse.Namespace) -> None:
    """Run one config on one engine in this (fresh) process; print its figures as JSON."""
    imports = peak_rss_mib()
    set_threads(args.threads)
    sampler = DescendantsRSS()
    sampler.start()
    timing = timed(RunConfig.from_mapping(mapping), engine, args.cpus_per_client, args.processes[0])
    figures = {
        "seconds-per-round": timing.per_round,
        "start-up": timing.startup,
        "import-rss-mib": imports,
        "peak-rss-mib": peak_rss_mib(),
        "children-rss-mib": sampler.stop(),
    }
    print(RESULT + json.dumps(figures), flush=True)


def in_subprocess(
    engine: str, mapping: dict[str, Any], args: argparse.Namespace, processes: int = 1
) -> dict:
    """`child` in a new Python process (the in-process engines with `processes` worker
    processes); its figures, or SystemExit with its output."""
    command = [sys.executable, __file__, "--child", engine, "--config", json.dumps(mapping)]
    command += ["--cpus-per-client", str(args.cpus_per_client)]
    command += ["--processes", str(processes)]
    command += [] if args.threads is None else ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{engine}: the benchmark run failed (exit {done.returncode})")
    return json.loads(lines[-1].removeprefix(RESULT))


def report(engine: str, figures: dict, tag: str = "") -> None:
    """The figures of one run as `<what> <engine> [m=<m>] <value>` lines."""
    where = f"{engine} {tag}".strip()
    print(f"seconds-per-round {where} {figures['seconds-per-round']:.4f}")
    if engine != BARE:
        print(f"start-up {where} {figures['start-up']:.2f}")
    print(f"peak-rss-mib {where} {figures['peak-rss-mib']:.1f}")
    print(f"import-rss-mib {where} {figures['import-rss-mib']:.1f}")
    if figures["children-rss-mib"]:  # Ray's actors, or the worker processes
        print(f"children-rss-mib {where} {figures['children-rss-mib']:.1f}")


def base_mapping(args: argparse.Namespace, dataset: str, model: str) -> dict[str, Any]:
    """The run config keys both modes share."""
    return {
        "algorithm": "fedavg",
        "dataset": dataset,
        "data-root": args.data_root,
        "model": model,
        "batch-size": args.batch_size,
        "num-rounds": args.rounds,
        "results-dir": "",
    }


def cross_device(args: argparse.Namespace) -> None:
    """The 1,000-client benchmark: every engine against the bare loop."""
    dataset = dataset_for(args.dataset, args.data_root, "mnist-embedded")
    mapping = {
        **base_mapping(args, dataset, args.model or "cnn"),
        "num-clients": args.clients,
        "participation": args.cohort / args.clients,
    }
    config = RunConfig.from_mapping(mapping)
    tau = args.tau or one_epoch(config, args.epochs)
    mapping["tau"] = tau
    train, _ = workload.load_split(config)
    print(
        f"scale: {args.clients} clients x {len(train) / args.clients:.0f} examples of "
        f"{dataset}, cohort {args.cohort}, tau {tau}, batch {args.batch_size}, fedavg, "
        f"{mapping['model']}, {args.rounds} rounds, torch threads {args.threads or 'default'}"
    )
    baseline = in_subprocess(BARE, mapping, args)
    report(BARE, baseline)
    ratios, speedups = {}, {}
    for engine in args.engines:
        counts = [1] if engine == "simulation" else args.processes
        for n in counts:
            figures = in_subprocess(engine, mapping, args, n)
            name = engine if n == 1 else f"{engine}-{n}p"
            report(name, figures)
            ratios[name] = figures["seconds-per-round"] / baseline["seconds-per-round"]
            if n == counts[0]:
                first = figures["seconds-per-round"]
            else:
                speedups[name] = first / figures["seconds-per-round"]
    for name, ratio in ratios.items():
        print(f"overhead-ratio {name} {ratio:.2f}")
    for name, speedup in speedups.items():
        print(f"process-speedup {name} {speedup:.2f}")


def m_sweep(args: argparse.Namespace) -> None:
    """A fixed cohort out of ever more workers: seconds per round against the first m."""
    dataset = dataset_for(args.dataset, args.data_root, "synthetic")
    model = args.model or "logreg"
    tau = args.tau or 5
    print(
        f"m-sweep: cohort {args.cohort} of m = {', '.join(map(str, args.m_values))} workers, "
        f"{dataset}, {model}, tau {tau}, batch {args.batch_size}, fedavg, {args.rounds} rounds, "
        f"torch threads {args.threads or 'default'}"
    )
    for engine in [BARE, *args.engines]:
        first = None
        for m in args.m_values:
            mapping = {
                **base_mapping(args, dataset, model),
                "num-clients": m,
                "participation": args.cohort / m,
                "tau": tau,
            }
            figures = in_subprocess(engine, mapping, args)
            report(engine, figures, f"m={m}")
            first = first or figures["seconds-per-round"]
            print(f"m-ratio {engine} m={m} {figures['seconds-per-round'] / first:.2f}")


def positive_ints(raw: str) -> list[int]:
    """--m-values: comma-separated worker counts."""
    values = [int(v) for v in raw.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("positive integers, comma separated")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m-sweep", action="store_true", help="grow m under a fixed cohort")
    parser.add_argument("--clients", type=int, default=1000, help="m (not in the sweep)")
    parser.add_argument("--m-values", type=positive_ints, default=[100, 1000, 10000])
    parser.add_argument("--cohort", type=int, default=50, help="workers sampled per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument(
        "--tau", type=int, help="local steps (default: --epochs over a mean shard; sweep: 5)"
    )
    parser.add_argument(
        "--dataset",
        default="auto",
        help="a fedcoop data set, or auto: fashion-mnist when its files are found, else "
        "mnist-embedded (sweep: synthetic)",
    )
    parser.add_argument("--data-root", default="", help="where fashion-mnist's files are")
    parser.add_argument(
        "--processes",
        type=positive_ints,
        default=[1],
        help="the in-process engines' worker processes, each count a run (e.g. 1,2)",
    )
    engine_arguments(parser)
    parser.set_defaults(model=None)  # cnn, or logreg in the sweep
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.child:
            child(args.child, json.loads(args.config), args)
        elif args.m_sweep:
            m_sweep(args)
        else:
            cross_device(args)
    except ConfigError as error:  # a size the run config refuses (a cohort above m, say)
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
