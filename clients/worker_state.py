"""A node's worker between messages: its state in ``context.state`` (the record of truth),
in a state file on the device (node config ``state-dir``), and kept alive in this process.

context.state holds the model x_i, the optimizer's state arrays by the names its optimizer
declares (momentum), the CoCoD-SGD snapshot (for that rule only), the gradient held back under
Remark 1 and the last round and step count; a worker kept alive in this process (its tensors
already on the device) is reused while the token written with the state proves it is that
round's. `clients.client_app` reads and answers the messages.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import messages
from fedcoop import algorithms, checkpoint, workload
from fedcoop.config import RunConfig
from fedcoop.local_rule import LocalRule, WorkerState
from fedcoop.model_vectors import default_device, loss_function
from fedcoop.optimizers import CONTROL_DELTA, LocalSGD

LOG = logging.getLogger("flwr.fedcoop")
_T = TypeVar("_T")
STATE_ARRAYS = "worker"
STATE_META = "worker-meta"
#: eager replies: why the local steps of a round failed, reported when it is collected
FAILURE = "worker-failure"
#: Workers kept alive in this process, by (run id, node id): (state token, config, worker).
#: Bounded so that a process serving many nodes of a large model cannot grow without limit.
LIVE: OrderedDict[tuple[int, int], tuple[str, RunConfig, WorkerState]] = OrderedDict()
MAX_LIVE = 64


def node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) of this SuperNode; simulation sets both."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise ValueError(
            f"SuperNode config lacks {missing}: start it with "
            '--node-config "partition-id=<i> num-partitions=<m>"'
        ) from None


@lru_cache(maxsize=8)
def rule_for(config: RunConfig) -> LocalRule:
    """The local rule every worker of `config` in this process shares (its model layout,
    optimizer, schedule and augmentation)."""
    sgd = LocalSGD(
        lr=config.lr,
        batch_size=config.batch_size,
        optimizer=algorithms.local_optimizer(config),
    )
    train, _ = workload.load_split(config)
    return LocalRule(
        workload.build_model(config),
        sgd,
        default_device(),
        train.x.dtype,
        loss_fn=loss_function(train),
        lr_at=workload.schedule(config).lr,
        augment=workload.augmentation(config),
        local_buffers=config.bn_stats == "local",
    )


def build_worker(
    config: RunConfig, context: Context, state: RecordDict | None = None
) -> WorkerState:
    """This node's worker as `state` (context.state after a round) saved it, or with none
    yet, holding only its shard and the template's values, which its first message
    replaces."""
    partition_id, num_partitions = node_partition(context)
    rule = rule_for(config)
    shard = workload.shard(config, partition_id, num_partitions)
    if state is None:
        return rule.worker(shard)
    arrays = state.array_records[STATE_ARRAYS]

    def tensor(key: str) -> torch.Tensor | None:
        return rule.vector(torch.from_numpy(arrays[key].numpy())) if key in arrays else None

    worker = rule.worker(shard, torch.from_numpy(arrays[messages.MODEL].numpy()))
    worker.snapshot, worker.pending = tensor("snapshot"), tensor("pending")
    for name in rule.sgd.optimizer.state_names:
        if (value := tensor(name)) is not None:
            worker.opt_state[name] = value
    worker.steps_done = int(state.config_records[STATE_META]["steps"])
    return worker


def save(
    worker: WorkerState,
    context: Context,
    config: RunConfig,
    round_: int,
    *,
    loss: float,
    seconds: float,
    keep_snapshot: bool,
    evaluation: dict[str, float] | None = None,
) -> None:
    """Write the worker into context.state, the record of truth, and keep it alive in this
    process. The CoCoD snapshot is kept only for the rule that
    reads it: elsewhere it would double the state Flower ships and checkpoints carry.
    `evaluation`: its model's local-test-* metrics, which its reply reports."""

    def cpu(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    context.state[STATE_ARRAYS] = messages.vector_record(
        **{
            messages.MODEL: cpu(worker.x),
            **{k: cpu(v) for k, v in rule_for(config).opt_state_of(worker).items()},
            "snapshot": cpu(worker.snapshot) if keep_snapshot else None,
            "pending": cpu(worker.pending),
        }
    )
    token = uuid.uuid4().hex
    context.state[STATE_META] = ConfigRecord(
        {
            "round": round_,
            "token": token,
            "steps": worker.steps_done,
            "loss": loss,
            "seconds": seconds,
            **(evaluation or {}),
        }
    )
    context.state.config_records.pop(FAILURE, None)
    persist(context)
    key = (context.run_id, context.node_id)
    remember(LIVE, key, (token, config, worker))


def remember(table: OrderedDict[tuple[int, int], _T], key: tuple[int, int], value: _T) -> None:
    """Keep `value` under `key` in one of this process's per-node tables, forgetting the
    oldest entries beyond MAX_LIVE (runs that ended without a last message leave some)."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_LIVE:
        table.popitem(last=False)


def state_file(context: Context) -> Path | None:
    """Where this node keeps its worker state on the device (node config `state-dir`), so
    that a SuperNode that restarts mid-run, with an empty context.state, resumes from it."""
    directory = context.node_config.get("state-dir")
    if not directory:
        return None
    return Path(str(directory)) / f"{context.run_id}-partition-{node_partition(context)[0]}.npz"


def persist(context: Context) -> None:
    """Write context.state's worker to its state file atomically (temporary file, fsync,
    rename): a crash mid-write leaves the previous round's file whole."""
    path = state_file(context)
    if path is None:
        return
    meta = context.state.config_records[STATE_META]
    arrays = {k: a.numpy() for k, a in context.state.array_records[STATE_ARRAYS].items()}
    rounds = np.array([meta["round"], meta["steps"]], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(path, lambda f: np.savez(f, meta=rounds, **arrays))


def recover(context: Context) -> None:
    """Load the worker from its state file when context.state has none (the SuperNode
    restarted); the state file of a node that never trained in this run does not exist."""
    path = state_file(context)
    if path is None or STATE_META in context.state.config_records or not path.exists():
        return
    with np.load(path) as saved:
        round_, steps = (int(v) for v in saved["meta"])
        arrays = {k: saved[k] for k in saved.files if k != "meta"}
    install(context, messages.vector_record(**arrays), round_, steps)
    LOG.info("fedcoop: restored the worker of round %d from %s", round_, path)


def install(context: Context, arrays: ArrayRecord, round_: int, steps: int) -> None:
    """Make `arrays` this node's worker state after `round_` (a fresh token: no live
    worker of this process matches it)."""
    context.state[STATE_ARRAYS] = arrays
    context.state[STATE_META] = ConfigRecord(
        {"round": round_, "steps": steps, "token": uuid.uuid4().hex}
    )


def current_worker(config: RunConfig, context: Context) -> WorkerState:
    """The worker as context.state describes it after its last round.

    When this process ran that round itself, the worker it kept alive (its tensors already
    on the device) is used as is, which saves copying every tensor back; the token written
    with the state proves it is the same round's state. Otherwise (another simulation actor
    ran the last round, or this process restarted) the worker is rebuilt from context.state.
    """
    meta = context.state.config_records.get(STATE_META)
    live = LIVE.get((context.run_id, context.node_id))
    if meta is not None and live is not None and live[0] == meta["token"] and live[1] == config:
        return live[2]
    return build_worker(config, context, None if meta is None else context.state)


def last_round(state: RecordDict) -> int:
    meta = state.config_records.get(STATE_META)
    return 0 if meta is None else int(meta["round"])


def forget(context: Context) -> None:
    """The worker kept alive may be half-way through a round: the next message must start
    again from context.state, which still holds the last completed round."""
    LIVE.pop((context.run_id, context.node_id), None)


def snapshot(context: Context, *, with_model: bool = True) -> messages.WorkerSnapshot:
    """This worker's saved state (an untrained worker: round 0), its arrays as
    context.state holds them serialized; without the model when the message carries it
    anyway."""
    meta = context.state.config_records.get(STATE_META)
    if meta is None:
        return messages.NO_STATE
    arrays = context.state.array_records[STATE_ARRAYS]
    kept = {k: a.data for k, a in arrays.items() if with_model or k != messages.MODEL}
    return messages.WorkerSnapshot(int(meta["round"]), int(meta["steps"]), kept)


def restore(state: messages.WorkerSnapshot, context: Context) -> None:
    """Replace this node's state with the one a resumed run sends (round 0: no state)."""
    if state.round and messages.MODEL not in state.arrays:
        raise ValueError(f"the worker state of round {state.round} it sends carries no model")
    forget(context)
    for records, key in (
        (context.state.array_records, STATE_ARRAYS),
        (context.state.config_records, STATE_META),
    ):
        records.pop(key, None)
    if state.round:
        install(context, messages.vector_record(**state.arrays), state.round, state.steps)


def report(context: Context, send_state: bool) -> RecordDict:
    """The reply content for the round context.state holds: its model, training loss and
    compute seconds, and with `send_state` the whole state, for a checkpoint."""
    meta = context.state.config_records[STATE_META]
    nan = float("nan")  # a state restored from elsewhere does not know them
    entries: dict[str, Any] = {
        # the model as context.state holds it: serialized once, when the round ended
        messages.MODEL: context.state.array_records[STATE_ARRAYS][messages.MODEL].data,
        "train-loss": float(meta.get("loss", nan)),
        "compute-time": float(meta.get("seconds", nan)),
        "round": int(meta["round"]),
    }
    entries.update({k: float(meta[k]) for k in messages.LOCAL_EVALUATION if k in meta})
    arrays = context.state.array_records[STATE_ARRAYS]
    if CONTROL_DELTA in arrays:  # SCAFFOLD: what the round changed of c_i
        entries[messages.DELTA] = arrays[CONTROL_DELTA].data
    if send_state:
        entries.update(snapshot(context, with_model=False).entries())
    return messages.reply_content(entries)
