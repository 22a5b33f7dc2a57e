"""Wall-clock per round of real deployments on loopback (TLS, node authentication, 3 nodes).

overhead: the same tiny run (least squares, so compute is nearly nil) on Flower's default
deployment (stock SuperLink, `flower-supernode --isolation subprocess`: one ClientApp process
per message) and on the helper's (python -m deploy: long-lived ClientApps, short polls),
next to the same config simulated in this process (no transport at all).

overlap: sync, local-sgd and overlap (plain, and with eager replies: the local steps run
while the reply and the next message travel) at the same tau over emulated links between each
SuperNode and the SuperLink. tc netem is absent here, so each SuperNode dials its own
user-space TCP proxy that holds every chunk for the one-way latency after serialising it at
the link rate (tbf could limit rate but not add delay). Each run reports the devices' mean
`compute-time` per round (measured around the local steps); the rest of a round is
communication the devices waited for (Flower's message path and the link). The fraction an
overlap variant hides is 1 - its exposed communication / local-sgd's.

Both report, per number of SuperNodes (`--nodes 3 8 16 32`), each process's CPU while the
deployment idles (before the run) and during the run (% of one core, from /proc/<pid>/stat),
and its peak RSS (VmHWM), with the load average: `--workload cnn-mnist` measures the RSS of a
device training the CNN on MNIST.

    python benchmarks/deployment.py overhead --rounds 4
    python benchmarks/deployment.py overhead --nodes 3 8 16 32 --rounds 10 --skip-default
    python benchmarks/deployment.py overhead --workload cnn-mnist --nodes 3 --skip-default
    python benchmarks/deployment.py overlap --rounds 4 --tau 256 --nodes 2 --out overlap.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.procstats import Sampler, cpu_share  # noqa: E402
from deploy import commands, credentials, processes  # noqa: E402

#: name -> (one-way latency in seconds, rate in bit/s), the issue's presets
PRESETS = {"50ms-20mbit": (0.05, 20e6), "200ms-5mbit": (0.2, 5e6)}
#: the rows of the overlap table: name -> run config
ALGORITHMS = {
    "sync": "algorithm='sync'",
    "local-sgd": "algorithm='local-sgd'",
    "overlap": "algorithm='overlap'",
    "overlap-eager": "algorithm='overlap' eager-reply=true",
}
OVERLAPS = ("overlap", "overlap-eager")


# -- an emulated link -------------------------------------------------------------------------
@dataclass
class Link:
    """One-way latency and rate of both directions; changed between runs, read per chunk."""

    latency: float = 0.0
    rate: float | None = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    """Forward one direction: a chunk leaves after the ones before it were serialised at the
    link rate, then travels `latency`; reading goes on meanwhile (a link holds in flight up to
    its bandwidth-delay product)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def receive() -> None:
        free_at = 0.0
        with contextlib.suppress(ConnectionError):  # a peer that resets ends the direction
            while chunk := await reader.read(65536):
                done = loop.time()
                if link.rate:
                    free_at = max(free_at, done) + len(chunk) * 8 / link.rate
                    done = free_at
                queue.put_nowait((done + link.latency, chunk))
        queue.put_nowait(None)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            while (item := await queue.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
        writer.close()

    await asyncio.gather(receive(), send())


class Proxies:
    """TCP proxies to `target`, one per SuperNode, each with its own link, in a thread."""

    def __init__(self, target: int, count: int, link: Link) -> None:
        self.link = link
        self.ports: list[int] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(target, count, ready))
        self._thread.start()
        ready.wait()

    def _serve(self, target: int, count: int, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:  # the SuperLink is not up (yet): the SuperNode retries
                writer.close()
                return
            await asyncio.gather(
                _pipe(reader, up_writer, self.link), _pipe(up_reader, writer, self.link)
            )

        async def listen() -> None:
            for _ in range(count):
                server = await asyncio.start_server(handle, "127.0.0.1", 0)
                self.ports.append(server.sockets[0].getsockname()[1])
            ready.set()

        self._loop.run_until_complete(listen())
        self._loop.run_forever()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


# -- a deployment on loopback -----------------------------------------------------------------
class Loopback:
    """A SuperLink on `port` and `nodes` SuperNodes as `python -m deploy` starts them
    (helper=True), or as Flower starts them by default (helper=False); node i dials port
    `dial[i]` (a proxy) or the SuperLink's."""

    def __init__(
        self, root: Path, nodes: int, helper: bool, port: int, dial: Sequence[int] | None
    ) -> None:
        self.root, self.state, self.port = root, root / "state", port
        self.env = processes.process_env(root / "cli")
        self.ca = root / "certs" / "ca.crt"
        credentials.write_certificates(root / "certs", ["localhost", "127.0.0.1"])
        keys = credentials.write_node_keys(root / "keys", nodes)
        env = processes.process_env(self.state / "home" / "superlink")
        if helper:
            shim = commands.serverapp_shim(self.state, commands.DEFAULT_POLL)
            env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
        command = commands.superlink_command(
            root / "certs", "127.0.0.1", self.port, stock=not helper
        )
        processes.start(self.state, "superlink", command, env)
        processes.wait_for_port(self.port)
        self.helper("register", *self.link(self.port), *[str(k) for k in keys[1::2]])
        for i in range(nodes):
            node_commands = commands.supernode_commands(
                partition_id=i,
                num_partitions=nodes,
                superlink=f"127.0.0.1:{dial[i] if dial else self.port}",
                root_cert=self.ca.resolve(),
                key=keys[2 * i].resolve(),
                runtime_port=processes.free_port(),
                isolation="process" if helper else "subprocess",
                secret=credentials.superexec_secret(self.state, i) if helper else None,
            )
            env = processes.process_env(self.state / "home" / f"supernode-{i}")
            for name, command in node_commands:
                processes.start(self.state, name, command, env)

    def link(self, port: int) -> list[str]:
        return ["--superlink", f"127.0.0.1:{port}", "--root-cert", str(self.ca)]

    def helper(self, *args: str) -> None:
        command = commands.helper_command(*args)
        done = subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed:\n{done.stdout}{done.stderr}")

    def submit(self, run_config: str) -> list[dict[str, float]]:
        """Run the app with `run_config`; the rows of its metrics.jsonl."""
        runs = Path(tempfile.mkdtemp(dir=self.root))
        config = f"{run_config} results-dir='{runs}'"
        self.helper("submit", str(REPO), *self.link(self.port), "--stream", "--run-config", config)
        (run_dir,) = runs.iterdir()
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@contextmanager
def loopback(
    nodes: int, helper: bool, port: int | None = None, dial: Sequence[int] | None = None
) -> Iterator[Loopback]:
    """A Loopback deployment in a temporary directory, stopped however the block ends."""
    with tempfile.TemporaryDirectory(prefix="fedcoop-deploy-bench-") as root:
        try:
            yield Loopback(Path(root), nodes, helper, port or processes.free_port(), dial)
        finally:
            processes.stop(Path(root) / "state")


def per_round(rows: Sequence[dict[str, float]]) -> float:
    """Seconds per round after the first (which also carries the run's start-up)."""
    wall = [row["wall-time"] for row in rows]
    return (wall[-1] - wall[0]) / (len(wall) - 1)


def compute_per_round(rows: Sequence[dict[str, float]]) -> float:
    """The devices' mean seconds of local steps per round, over the rounds after the first."""
    return sum(row["compute-time"] for row in rows[1:]) / (len(rows) - 1)


def simulated_per_round(run_config: str, nodes: int) -> float:
    """The same config through InProcessGrid in this process: compute and no transport."""
    from flwr.common.config import parse_config_args

    from clients.client_app import app
    from fedcoop.config import RunConfig
    from simulations.inprocess import InProcessGrid
    from strategies.server_app import run

    values = parse_config_args([run_config])  # as `flwr run --run-config` reads it
    config = RunConfig.from_mapping({**values, "num-clients": nodes, "results-dir": ""})
    return per_round(run(InProcessGrid(app, nodes), config).rounds)


def _received(state: Path, node: int) -> int:
    """How many messages SuperNode `node` has received, from its log."""
    log = processes.log_file(state, f"supernode-{node}")
    return log.read_text(errors="replace").count("Receiving: ") if log.exists() else 0


def _wait(what: str, done: Callable[[], bool], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout}s")
        time.sleep(0.5)


def wait_for_nodes(state: Path, nodes: int) -> None:
    """Return once every SuperNode has its node id (it is registered and activated)."""
    logs = [processes.log_file(state, f"supernode-{i}") for i in range(nodes)]
    _wait(
        f"not all {nodes} SuperNodes connected",
        lambda: all(p.exists() and "SuperNode ID" in p.read_text(errors="replace") for p in logs),
    )


# -- the two benchmarks -----------------------------------------------------------------------
#: run configs of the overhead benchmark: nil compute, or the default CNN on MNIST
WORKLOADS = {
    "least-squares": "dataset='least-squares' model='linear' batch-size=0",
    "cnn-mnist": "dataset='mnist-embedded' model='cnn' batch-size=32",
}


def measure_helper(
    run_config: str, nodes: int, rounds: int, idle_seconds: float
) -> dict[str, object]:
    """The helper's deployment of `nodes` SuperNodes: its idle CPU (after every node has
    connected and settled), then the run's seconds per round, the CPU of every role over
    rounds 2 on (every ClientApp has loaded the app: each SuperNode has its third message,
    after the handshake and round 1) and the peak RSS of each role."""
    with loopback(nodes, True) as deployment:
        state = deployment.state
        wait_for_nodes(state, nodes)
        sampler = Sampler(state)
        try:
            time.sleep(5)  # the last processes finish starting
            load_idle = os.getloadavg()[0]
            sampler.sample()
            before, began = sampler.cpu(), time.monotonic()
            time.sleep(idle_seconds)
            sampler.sample()
            idle = cpu_share(before, sampler.cpu(), time.monotonic() - began)
            out: list[list[dict[str, float]]] = []
            run = threading.Thread(target=lambda: out.append(deployment.submit(run_config)))
            run.start()
            _wait(
                "round 2 not reached",
                lambda: not run.is_alive() or all(_received(state, i) >= 3 for i in range(nodes)),
            )
            sampler.sample()
            before, began = sampler.cpu(), time.monotonic()
            run.join()
            load_run = os.getloadavg()[0]
        finally:
            sampler.close()
        if not out:
            raise RuntimeError("the run failed: see its output above")
        seconds = time.monotonic() - began
        shares = cpu_share(before, sampler.cpu(), seconds)
        return {
            "s-per-round": per_round(out[0]),
            "idle-cpu": idle,
            "run-cpu": shares,
            "run-cpu-s-per-round": {
                role: share[2] / 100 * seconds / (rounds - 1) for role, share in shares.items()
            },
            "peak-rss-mb": {role: kb / 1024 for role, kb in sampler.peak_rss().items()},
            "load-idle": load_idle,
            "load-run": load_run,
        }


def overhead(args: argparse.Namespace) -> None:
    results = {}
    for nodes in args.nodes:
        run_config = (
            f"algorithm='local-sgd' num-clients={nodes} num-rounds={args.rounds} tau=2 "
            + WORKLOADS[args.workload]
        )
        print(f"run config: {run_config}", flush=True)
        simulated = simulated_per_round(run_config, nodes)
        print(f"in-process simulation: {simulated:.3f} s/round", flush=True)
        if not args.skip_default:
            with loopback(nodes, False) as deployment:
                seconds = per_round(deployment.submit(run_config))
            print(f"Flower default (--isolation subprocess): {seconds:.3f} s/round", flush=True)
        figures = measure_helper(run_config, nodes, args.rounds, args.idle_seconds)
        figures["simulated-s-per-round"] = simulated
        print(f"helper: {json.dumps(figures)}", flush=True)
        results[nodes] = figures
    print_scale_table(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


def print_scale_table(results: dict[int, dict[str, object]]) -> None:
    """Markdown, a row per number of SuperNodes: the helper's seconds per round and its
    overhead over the simulation; idle CPU (% of a core, mean (max) per SuperNode and per
    ClientApp process, the SuperLink with its SuperExec); CPU seconds per round of the
    SuperLink, the ServerApp and one device (SuperNode + ClientApp, mean); peak RSS per
    process (MB, the largest of each kind); the load average while idle / after the run."""
    print(
        "\n| nodes | s/round | over simulation | idle CPU %: SuperNode / ClientApp / SuperLink "
        "| CPU s per round: SuperLink / ServerApp / device | peak RSS MB: SuperNode / ClientApp "
        "| load |"
    )
    print("|---|---|---|---|---|---|---|")
    for nodes, r in results.items():
        idle, cpu, rss = r["idle-cpu"], r["run-cpu-s-per-round"], r["peak-rss-mb"]
        over = r["s-per-round"] - r["simulated-s-per-round"]
        device = (cpu["supernode"] + cpu["clientapp"]) / nodes
        cells = [
            str(nodes), f"{r['s-per-round']:.2f}", f"{over:.2f}",
            f"{idle['supernode'][0]:.2f} ({idle['supernode'][1]:.2f}) / "
            f"{idle['clientapp'][0]:.2f} ({idle['clientapp'][1]:.2f}) / "
            f"{idle['superlink'][2]:.1f}",
            f"{cpu['superlink']:.2f} / {cpu.get('serverapp', 0.0):.2f} / {device:.3f}",
            f"{rss['supernode']:.0f} / {rss['clientapp']:.0f}",
            f"{r['load-idle']:.1f} / {r['load-run']:.1f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def overlap(args: argparse.Namespace) -> None:
    common = (
        f"num-clients={args.nodes} num-rounds={args.rounds} tau={args.tau} "
        f"dataset='mnist-embedded' model='{args.model}' batch-size={args.batch_size}"
    )
    print(f"run config: {common}")
    link = Link()
    table: dict[str, dict[str, float]] = {}
    compute: dict[str, dict[str, float]] = {}
    port = processes.free_port()
    proxies = Proxies(port, args.nodes, link)
    try:
        with loopback(args.nodes, True, port, proxies.ports) as deployment:
            for preset in ("none", *args.presets):
                link.latency, link.rate = PRESETS.get(preset, (0.0, None))
                for algorithm, chosen in ALGORITHMS.items():
                    rows = deployment.submit(f"{chosen} {common}")
                    table.setdefault(algorithm, {})[preset] = per_round(rows)
                    compute.setdefault(algorithm, {})[preset] = compute_per_round(rows)
                    print(
                        f"{preset:12} {algorithm:13} {table[algorithm][preset]:.3f} s/round, "
                        f"compute {compute[algorithm][preset]:.3f} s"
                    )
    finally:
        proxies.close()
    print_table(table, compute, args.presets)
    if args.out is not None:
        results = {"run-config": common, "s-per-round": table, "compute-per-round": compute}
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


def print_table(
    table: dict[str, dict[str, float]],
    compute: dict[str, dict[str, float]],
    presets: Sequence[str],
) -> None:
    """Markdown, a row per algorithm and link: s/round, the devices' compute s/round, the
    communication they waited for (s/round - compute), and the share of local-sgd's that an
    overlap variant hides."""
    print("\n| algorithm | link | s/round | compute | exposed communication | hidden |")
    print("|---|---|---|---|---|---|")
    for p in ["none", *presets]:
        local = table["local-sgd"][p] - compute["local-sgd"][p]
        for algorithm, row in table.items():
            exposed = max(0.0, row[p] - compute[algorithm][p])
            hidden = f"{1 - exposed / local:.0%}" if algorithm in OVERLAPS else ""
            cells = [algorithm, p, f"{row[p]:.2f}", f"{compute[algorithm][p]:.2f}"]
            print("| " + " | ".join([*cells, f"{exposed:.2f}", hidden]) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    both = argparse.ArgumentParser(add_help=False)
    both.add_argument("--rounds", type=int, default=4)
    both.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    help_ = "per-round overhead, idle CPU and RSS: Flower default vs the helper"
    p = sub.add_parser("overhead", parents=[both], help=help_)
    p.add_argument("--nodes", type=int, nargs="+", default=[3], help="one run per count")
    p.add_argument("--workload", choices=list(WORKLOADS), default="least-squares")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU sampled over")
    p.add_argument("--skip-default", action="store_true", help="only the helper's deployment")
    p.set_defaults(func=overhead)
    p = sub.add_parser("overlap", parents=[both], help="sync / local-sgd / overlaps over links")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--tau", type=int, default=32)
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.set_defaults(func=overlap)
    args = parser.parse_args(argv)
    # SIGTERM (a timeout) unwinds like Ctrl-C, so each deployment still stops its processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args.func(args)


if __name__ == "__main__":
    main()
