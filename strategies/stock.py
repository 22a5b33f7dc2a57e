"""Flower's stock strategies on fedcoop's clients: `algorithm = "flower:FedAdam"`.

Any strategy of `flwr.serverapp.strategy` (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad,
FedProx, FedTrimmedAvg, FedMedian, Krum, MultiKrum, Bulyan, QFedAvg and the differential
privacy wrappers) runs its own `Strategy.start` loop, unchanged, over the run's grid, so
every engine and a deployment run it; fedcoop's ClientApp answers its standard messages
(`clients.standard`) with the run's partitions, model and local rule. This module builds
the strategy from the config (its keyword arguments from strategy-args) and turns its
rounds into fedcoop's results: the handshake maps nodes to workers, a `RecordingGrid`
sees each round's messages (bytes, which workers answered, their losses), and the
server-side evaluation writes each round's row with the virtual clock of FedAvg's exchange.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run

from clients import messages, standard
from fedcoop import algorithms, participation
from fedcoop.clock import VirtualClock
from fedcoop.config import RunConfig, parse_strategy_args
from fedcoop.coordinator import consensus_distance
from fedcoop.errors import ConfigError, RunFailed
from fedcoop.model_vectors import Layout
from strategies.result import EvaluateFn, RunResult
from strategies.rounds import local_means, round_tau
from strategies.transport import GridTransport

LOG = logging.getLogger("flwr.fedcoop")

#: the DP wrappers whose clipping the workers do, and the mod that does it
CLIENT_SIDE_MODS = {
    "DifferentialPrivacyClientSideFixedClipping": "fixedclipping_mod",
    "DifferentialPrivacyClientSideAdaptiveClipping": "adaptiveclipping_mod",
}
#: stock strategies for another kind of model than fedcoop's torch vectors
NOT_FOR_TORCH = ("FedXgbBagging", "FedXgbCyclic")


def strategy_names() -> list[str]:
    """The stock strategies `flower:<name>` may name."""
    return [
        name
        for name in flower_strategies.__all__
        if name not in NOT_FOR_TORCH
        and inspect.isclass(cls := getattr(flower_strategies, name))
        and issubclass(cls, Strategy)
        and not inspect.isabstract(cls)
    ]


def build(config: RunConfig) -> Strategy:
    """The stock strategy `config.algorithm` names, with strategy-args as its keyword
    arguments over fedcoop's defaults: the config's participation as fraction-train (at
    least the cohort fedcoop samples), every node connected before round 1, and no
    federated evaluation (the server evaluates the global model on the test split every
    round; set fraction-evaluate to add the clients' evaluation). A wrapper (a DP
    strategy) wraps strategy-args' "strategy": a name or {"name": ..., its arguments}."""
    name = config.algorithm.removeprefix(algorithms.FLOWER_PREFIX)
    try:
        mods = [mod.__name__ for mod in standard.mods(config)]
    except ValueError as error:
        raise ConfigError("client-mods", config.client_mods, str(error)) from None
    needed = CLIENT_SIDE_MODS.get(name)
    if needed is not None and needed not in mods:
        # without it the workers send unclipped updates, which the noise does not cover
        valid = f"{needed} among them: {name} relies on the workers clipping their updates"
        raise ConfigError("client-mods", config.client_mods, valid)
    return _build(name, parse_strategy_args(config.strategy_args), config)


def _build(name: str, args: dict[str, Any], config: RunConfig) -> Strategy:
    """Strategy `name` with `args` over fedcoop's defaults (see `build`), its inner one
    built the same way."""
    if name not in strategy_names():
        valid = f"flower:<one of {', '.join(strategy_names())}>"
        raise ConfigError("algorithm", config.algorithm, valid)
    cls = getattr(flower_strategies, name)
    parameters = inspect.signature(cls).parameters
    cohort = participation.cohort_size(config.num_clients, config.participation)
    defaults: dict[str, Any] = {
        "fraction_train": config.participation,
        "min_train_nodes": cohort,
        "fraction_evaluate": 0.0,
        "min_evaluate_nodes": 1,
        "min_available_nodes": config.num_clients,
        "num_sampled_clients": cohort,
    }
    kwargs = {k: v for k, v in defaults.items() if k in parameters} | args
    if "strategy" in parameters:
        inner = kwargs.get("strategy", "FedAvg")
        inner_name, inner_args = (inner, {}) if isinstance(inner, str) else _named(inner)
        kwargs["strategy"] = _build(inner_name, inner_args, config)
    try:
        inspect.signature(cls).bind(**kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        takes = ", ".join(p for p in parameters if p != "self")
        raise ConfigError(
            "strategy-args", config.strategy_args, f"{name} takes {takes} ({error})"
        ) from None


def _named(inner: Any) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of a wrapped strategy given as {"name": ..., arguments}."""
    if not isinstance(inner, dict) or not isinstance(inner.get("name"), str):
        raise ConfigError(
            "strategy-args", inner, 'its "strategy" must be a name or {"name": ..., arguments}'
        )
    args = {k.replace("-", "_"): v for k, v in inner.items() if k != "name"}
    return inner["name"], args


def record_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (the model, both ways)."""
    content = message.content
    return sum(len(a.data) for record in content.array_records.values() for a in record.values())


class RecordingGrid(Grid):
    """The run's grid, passed through, recording what the strategy's rounds send and get:
    bytes each way, and each train round's replies. `Strategy.start` sends each round as
    one `send_and_receive`."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        #: the current round's train replies (taken by `take_train`) and bytes [up, down]
        self.train_sent = 0
        self.train_replies: list[Message] = []
        self.traffic = [0, 0]

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.traffic[1] += sum(record_bytes(m) for m in messages)
        self.traffic[0] += sum(record_bytes(r) for r in replies if not r.has_error())
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.train_sent, self.train_replies = len(messages), replies
        return replies

    def take(self) -> tuple[int, list[Message], list[int]]:
        """(messages sent, replies, [bytes up, bytes down]) of the round since the last take."""
        out = self.train_sent, self.train_replies, self.traffic
        self.train_sent, self.train_replies, self.traffic = 0, [], [0, 0]
        return out


class StockRun:
    """One run of a stock strategy: its rows, written as the server evaluates each round."""

    def __init__(
        self,
        config: RunConfig,
        result: RunResult,
        x0: np.ndarray,
        entries: Layout,
        evaluate_fn: EvaluateFn,
        grid: RecordingGrid,
    ) -> None:
        self.config, self.result, self.entries = config, result, entries
        self.evaluate_fn, self.grid = evaluate_fn, grid
        self.worker_of = {node: i for i, node in enumerate(result.node_of_worker)}
        self.clock = VirtualClock.from_config(config, result.spec, model_bytes=x0.nbytes)
        self.trained: set[int] = set()
        self.started = time.monotonic()

    def vector(self, arrays: ArrayRecord) -> np.ndarray:
        return standard.record_vector(arrays, self.entries)

    def evaluate(self, round_: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's central evaluation: the global model on the test split; after a round,
        that round's row too."""
        metrics = self.evaluate_fn(self.vector(arrays))
        if round_ >= 1:
            self._row(round_, metrics, *self.grid.take())
        return MetricRecord(metrics)

    def _row(
        self,
        round_: int,
        metrics: dict[str, float],
        sent: int,
        replies: list[Message],
        traffic: list[int],
    ) -> None:
        ok = [r for r in replies if not r.has_error()]
        for reply in replies:
            if reply.has_error():
                worker = self.worker_of.get(reply.metadata.src_node_id, -1)
                self.result.events.append(
                    {
                        "round": round_,
                        "worker": worker,
                        "node": reply.metadata.src_node_id,
                        "kind": "failed",
                        "reason": reply.error.reason,
                    }
                )
        if sent and len(ok) < participation.quorum_size(self.config.quorum, sent):
            reasons = "; ".join(r.error.reason.splitlines()[0] for r in replies if r.has_error())
            self.result.failed = (
                f"round {round_}: {len(ok)} of {sent} sampled workers answered, fewer than "
                f"quorum {self.config.quorum:g}: {reasons}"
            )
            raise RunFailed(self.result.failed, partial=self.result)
        survivors = sorted(self.worker_of[r.metadata.src_node_id] for r in ok)
        self.trained.update(survivors)
        reported = [r.content.metric_records[messages.METRICS] for r in ok]
        tau = round_tau(self.result.spec, survivors, self.config.tau)

        def mean(key: str) -> float:
            return float(np.mean([m[key] for m in reported])) if reported else float("nan")

        rows = self.result.rounds
        row: dict[str, Any] = {
            "round": round_,
            "tau": tau,
            "local-steps": (rows[-1]["local-steps"] if rows else 0) + tau,
            "train-loss": mean("train-loss"),
            "consensus-distance": consensus_distance(
                np.stack([self.vector(next(iter(r.content.array_records.values()))) for r in ok])
            )
            if ok
            else float("nan"),
            "participants": len(ok),
            "dropped": sent - len(ok),
            "rejected": 0,
            **{f"test-{k}": v for k, v in metrics.items()},
            "wall-time": time.monotonic() - self.started,
            "compute-time": mean("compute-time"),
            **local_means(
                self.config,
                {k: [m[k] for m in reported if k in m] for k in messages.LOCAL_EVALUATION},
            ),
            "bytes-up": traffic[0],
            "bytes-down": traffic[1],
        }
        row["virtual-time"] = self.clock.round(round_, survivors or None, tau)
        rows.append(row)
        LOG.info("fedcoop: round %d, test %s", round_, metrics)


def run(
    grid: Grid,
    config: RunConfig,
    x0: np.ndarray,
    entries: Layout,
    evaluate_fn: EvaluateFn,
    pull_interval: float = 0.01,
) -> RunResult:
    """The stock strategy's run over `grid` from x0, as fedcoop's RunResult: the
    handshake, `Strategy.start` for num-rounds (Flower's node sampling seeded by the
    config's seed), then the trained workers' own final models evaluated."""
    strategy = build(config)
    transport: GridTransport[None] = GridTransport(grid, config, pull_interval)
    node_of, counts = transport.handshake(transport.await_nodes())
    spec = algorithms.resolve(config, counts)
    result = RunResult(config=config, spec=spec, node_of_worker=node_of)
    state = StockRun(config, result, x0, entries, evaluate_fn, RecordingGrid(grid))
    initial = standard.model_record(x0, entries)
    name = type(strategy).__name__
    LOG.info("fedcoop: Flower's %s on m=%d workers, tau=%d", name, len(node_of), config.tau)
    saved = random.getstate()
    random.seed(config.seed)  # Flower's node sampling draws from the random module
    try:
        outcome = strategy.start(
            state.grid,
            initial,
            num_rounds=config.num_rounds,
            timeout=config.round_timeout,
            train_config=ConfigRecord(config.to_mapping()),
            evaluate_config=ConfigRecord(config.to_mapping()),
            evaluate_fn=state.evaluate,
        )
    finally:
        random.setstate(saved)
    for round_, metrics in outcome.evaluate_metrics_clientapp.items():
        result.rounds[round_ - 1].update({f"client-{k}": v for k, v in metrics.items()})
    result.server_model = state.vector(outcome.arrays)
    result.client_evaluation = transport.evaluate_own_models(sorted(state.trained), node_of)
    return result
