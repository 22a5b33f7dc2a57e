"""A run's round rows and events: what the replies report, gathered while rounds are open,
and one metrics row per settled round (`RunResult.rounds`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.messages import LOCAL_EVALUATION
from fedcoop.clock import VirtualClock
from fedcoop.config import RunConfig
from fedcoop.coordinator import Coordinator, RoundSummary
from fedcoop.spec import CooperativeSpec
from strategies.result import EvaluateFn, RunResult

LOG = logging.getLogger("flwr.fedcoop")


@dataclass
class RoundLog:
    """The rows and events of `result`, with what open rounds have gathered so far: losses
    and seconds of local steps, [bytes up, bytes down], and the workers' final models (m x
    d, NaN rows until they come: one table, written in place, rather than m arrays stacked
    at the end). `started`: the run's start on time.monotonic()."""

    result: RunResult
    final: np.ndarray
    evaluate_fn: EvaluateFn | None
    started: float
    losses: dict[int, list[float]] = field(default_factory=dict)
    compute: dict[int, list[float]] = field(default_factory=dict)
    traffic: dict[int, list[int]] = field(default_factory=dict)
    #: round -> local-test-* metric -> the values the eval-local-workers reported
    local: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def event(self, round_: int, worker: int, kind: str, reason: str) -> None:
        """A fault of worker's in `round_` (see `RunResult.events`)."""
        node = self.result.node_of_worker[worker]
        self.result.events.append(
            {"round": round_, "worker": worker, "node": node, "kind": kind, "reason": reason}
        )
        LOG.warning(
            "fedcoop: round %d, worker %d (node %d) %s: %s", round_, worker, node, kind, reason
        )

    def sent(self, round_: int, nbytes: int) -> None:
        """A message of `round_` carried `nbytes` of vectors down."""
        self.traffic.setdefault(round_, [0, 0])[1] += nbytes

    def received(self, round_: int, nbytes: int) -> None:
        """A reply of `round_` carried `nbytes` of vectors up."""
        self.traffic.setdefault(round_, [0, 0])[0] += nbytes

    def trained(
        self, round_: int, loss: float, seconds: float, local: dict[str, float] | None = None
    ) -> None:
        """A worker's accepted report of `round_`: its mean loss and seconds of local steps,
        and (eval-local-workers) its own model's local-test-* metrics."""
        self.losses.setdefault(round_, []).append(loss)
        self.compute.setdefault(round_, []).append(seconds)
        for key, value in (local or {}).items():
            self.local.setdefault(round_, {}).setdefault(key, []).append(value)

    def settled(
        self,
        summary: RoundSummary,
        coordinator: Coordinator,
        clock: VirtualClock,
        survivors: list[list[int]],
    ) -> None:
        """Log a settled round's events, append its metrics row and its survivors."""
        for worker, kind in summary.settled_out.items():
            self.event(summary.round, worker, kind, summary.missing[worker])
        if summary.components > 1:
            LOG.warning(
                "fedcoop: round %d: the surviving workers %s mix in %d separate parts",
                summary.round,
                summary.survivors,
                summary.components,
            )
            self.result.events.append(
                {"round": summary.round, "kind": "split", "reason": f"{summary.components} parts"}
            )
        rounds = self.result.rounds
        tau = round_tau(self.result.spec, summary.survivors, summary.tau)
        steps = (rounds[-1]["local-steps"] if rounds else 0) + tau
        row = self._row(summary, steps, tau)
        row["virtual-time"] = clock.round(summary.round, summary.survivors, summary.tau)
        coordinator.observe(summary.round, row.get("test-loss", np.nan), row["virtual-time"])
        rounds.append(row)
        survivors.append(summary.survivors)
        LOG.info("fedcoop: %s", _format_row(row))

    def _row(self, summary: RoundSummary, steps: float, tau: float) -> dict[str, Any]:
        """One round's metrics, taking what was gathered for it: `steps` local steps per
        worker so far (`tau` this round; their means under round-time budgets); bytes
        count the round's messages and replies."""

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        row: dict[str, Any] = {
            "round": summary.round,
            "tau": tau,
            "local-steps": steps,
            "train-loss": mean(self.losses.pop(summary.round, [])),
            "consensus-distance": summary.consensus_distance,
            "participants": len(summary.survivors),
            "dropped": len(summary.missing) - len(summary.rejected),
            "rejected": len(summary.rejected),
        }
        if self.evaluate_fn is not None:
            row.update({f"test-{k}": v for k, v in self.evaluate_fn(summary.average).items()})
        row.update(local_means(self.result.config, self.local.pop(summary.round, {})))
        row["wall-time"] = time.monotonic() - self.started
        row["compute-time"] = mean(self.compute.pop(summary.round, []))
        row["bytes-up"], row["bytes-down"] = self.traffic.pop(summary.round, [0, 0])
        return row


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"round {row['round']:>3}", f"train-loss {row['train-loss']:.4f}"]
    for key in ("test-loss", "test-accuracy"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"consensus {row['consensus-distance']:.3g}")
    return " | ".join(parts)


def local_means(config: RunConfig, reported: Mapping[str, list[float]]) -> dict[str, float]:
    """The round's local-test-* columns: the mean of what the eval-local-workers that
    trained reported (NaN where none did), present in every row when the key is on."""
    if not config.eval_local_workers:
        return {}
    out = {}
    for key in LOCAL_EVALUATION:
        values = [v for v in reported.get(key, []) if not np.isnan(v)]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def round_tau(spec: CooperativeSpec, survivors: Sequence[int], tau: int) -> float:
    """A row's tau: the round's `tau`, or under round-time budgets the mean tau_i of the
    workers that answered."""
    if spec.worker_taus is None or not survivors:
        return tau
    return float(np.mean([spec.worker_taus[i] for i in survivors]))
