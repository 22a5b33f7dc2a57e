"""The stateful Flower ClientApp: one Cooperative SGD worker.

Between messages the worker keeps, in ``context.state``, its model x_i, its momentum buffers,
its CoCoD-SGD snapshot, the gradient held back under Remark 1 and the last round it ran, so
that a round picks up exactly where the previous one stopped. Each train message applies the
previous round's sync (the payload the server computed from the worker's column of W), then
runs tau local SGD steps and replies with the model. The header says which rules apply, so a
worker never needs the matrix itself. With ``state-dir`` in the SuperNode's node config, the
state is also written to the device after every round, so that a SuperNode that dies and
restarts mid-run (with an empty context.state) resumes from its own last round.

With `eager-reply`, a message's reply carries the model of the round the worker ran since
the previous message, and the new round's local steps run after the reply: in a background
thread where the process outlives messages (node config ``background-steps=true``, which
the deploy helper sets), so that the link carries the reply and the next message while the
worker computes; elsewhere (Flower's simulation engine, where the next message may reach
another process) before the reply, with the same result.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import messages
from fedcoop import algorithms, checkpoint, workload
from fedcoop.config import RunConfig
from fedcoop.cooperative import ClientRule, UpdateRule
from fedcoop.training import LocalSGD, LocalWorker, default_device, evaluate

LOG = logging.getLogger("flwr.fedcoop")
_T = TypeVar("_T")
STATE_ARRAYS = "worker"
STATE_META = "worker-meta"
#: eager replies: why the local steps of a round failed, reported when it is collected
FAILURE = "worker-failure"
#: Workers kept alive in this process, by (run id, node id): (state token, config, worker).
#: Bounded so that a process serving many nodes of a large model cannot grow without limit.
_LIVE: OrderedDict[tuple[int, int], tuple[str, RunConfig, LocalWorker]] = OrderedDict()
_MAX_LIVE = 64


@dataclass
class _Steps:
    """A round's local steps running in the background (eager replies)."""

    round: int
    worker: LocalWorker
    config: RunConfig
    keep_snapshot: bool
    #: (mean training loss, seconds) of the steps
    outcome: Future[tuple[float, float]]


#: the background steps of each node (run id, node id) of this process, until collected
_BACKGROUND: OrderedDict[tuple[int, int], _Steps] = OrderedDict()
_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fedcoop-steps")

app = ClientApp()


def _node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) of this SuperNode; simulation sets both."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise ValueError(
            f"SuperNode config lacks {missing}: start it with "
            '--node-config "partition-id=<i> num-partitions=<m>"'
        ) from None


def _worker(config: RunConfig, context: Context) -> LocalWorker:
    partition_id, num_partitions = _node_partition(context)
    shard = workload.shard(config, partition_id, num_partitions)
    momentum, nesterov = algorithms.local_optimizer(config)
    sgd = LocalSGD(
        lr=config.lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
    )
    return LocalWorker(
        workload.build_model(config),
        shard,
        sgd,
        default_device(),
        lr_at=workload.schedule(config).lr,
        augment=workload.augmentation(config),
    )


def _restore(worker: LocalWorker, state: RecordDict) -> None:
    arrays = state.array_records[STATE_ARRAYS]
    worker.load_vector(torch.from_numpy(arrays[messages.MODEL].numpy()))
    if "momentum" in arrays:
        worker.load_momentum(torch.from_numpy(arrays["momentum"].numpy()))
    if "snapshot" in arrays:
        worker.snapshot = torch.from_numpy(arrays["snapshot"].numpy()).to(worker.device)
    if "pending" in arrays:
        worker.load_pending(torch.from_numpy(arrays["pending"].numpy()))


def _save(
    worker: LocalWorker,
    x: np.ndarray,
    context: Context,
    config: RunConfig,
    round_: int,
    *,
    loss: float,
    seconds: float,
    keep_snapshot: bool,
) -> None:
    """Write the worker (whose model vector is x) into context.state, the record of truth,
    and keep it alive in this process. The CoCoD snapshot is kept only for the rule that
    reads it: elsewhere it would double the state Flower ships and checkpoints carry."""

    def cpu(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    context.state[STATE_ARRAYS] = messages.vector_record(
        **{
            messages.MODEL: x,
            "momentum": cpu(worker.momentum_vector()),
            "snapshot": cpu(worker.snapshot) if keep_snapshot else None,
            "pending": cpu(worker.pending_vector()),
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
        }
    )
    context.state.config_records.pop(FAILURE, None)
    _persist(context)
    key = (context.run_id, context.node_id)
    _remember(_LIVE, key, (token, config, worker))


def _remember(table: OrderedDict[tuple[int, int], _T], key: tuple[int, int], value: _T) -> None:
    """Keep `value` under `key` in one of this process's per-node tables, forgetting the
    oldest entries beyond _MAX_LIVE (runs that ended without a last message leave some)."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > _MAX_LIVE:
        table.popitem(last=False)


def _state_file(context: Context) -> Path | None:
    """Where this node keeps its worker state on the device (node config `state-dir`), so
    that a SuperNode that restarts mid-run, with an empty context.state, resumes from it."""
    directory = context.node_config.get("state-dir")
    if not directory:
        return None
    return Path(str(directory)) / f"{context.run_id}-partition-{_node_partition(context)[0]}.npz"


def _persist(context: Context) -> None:
    """Write context.state's worker to its state file atomically (temporary file, fsync,
    rename): a crash mid-write leaves the previous round's file whole."""
    path = _state_file(context)
    if path is None:
        return
    meta = context.state.config_records[STATE_META]
    arrays = {k: a.numpy() for k, a in context.state.array_records[STATE_ARRAYS].items()}
    rounds = np.array([meta["round"], meta["steps"]], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(path, lambda f: np.savez(f, meta=rounds, **arrays))


def _recover(context: Context) -> None:
    """Load the worker from its state file when context.state has none (the SuperNode
    restarted); the state file of a node that never trained in this run does not exist."""
    path = _state_file(context)
    if path is None or STATE_META in context.state.config_records or not path.exists():
        return
    with np.load(path) as saved:
        round_, steps = (int(v) for v in saved["meta"])
        arrays = {k: saved[k] for k in saved.files if k != "meta"}
    _install(context, messages.vector_record(**arrays), round_, steps)
    LOG.info("fedcoop: restored the worker of round %d from %s", round_, path)


def _install(context: Context, arrays: ArrayRecord, round_: int, steps: int) -> None:
    """Make `arrays` this node's worker state after `round_` (a fresh token: no live
    worker of this process matches it)."""
    context.state[STATE_ARRAYS] = arrays
    context.state[STATE_META] = ConfigRecord(
        {"round": round_, "steps": steps, "token": uuid.uuid4().hex}
    )


def _current_worker(config: RunConfig, context: Context) -> LocalWorker:
    """The worker as context.state describes it after its last round.

    When this process ran that round itself, the worker it kept alive (model, optimizer and
    data already on the device) is used as is, which saves rebuilding the model and copying
    every tensor back; the token written with the state proves it is the same round's state.
    Otherwise (another simulation actor ran the last round, or this process restarted) the
    worker is rebuilt from context.state.
    """
    meta = context.state.config_records.get(STATE_META)
    live = _LIVE.get((context.run_id, context.node_id))
    if meta is not None and live is not None and live[0] == meta["token"] and live[1] == config:
        return live[2]
    worker = _worker(config, context)
    if meta is not None:
        _restore(worker, context.state)
        worker.steps_done = int(meta["steps"])
    return worker


def _last_round(state: RecordDict) -> int:
    meta = state.config_records.get(STATE_META)
    return 0 if meta is None else int(meta["round"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake: which column of W this node is, and how many samples it holds."""
    config = messages.read_config(msg)
    partition_id, num_partitions = _node_partition(context)
    shard = workload.shard(config, partition_id, num_partitions)
    return Message(
        RecordDict(
            {
                messages.METRICS: MetricRecord(
                    {
                        "partition-id": partition_id,
                        "num-partitions": num_partitions,
                        "num-examples": len(shard),
                    }
                )
            }
        ),
        reply_to=msg,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Apply the sync the message carries, run the round's local steps, reply with x_i
    (eager replies: with the model of the round run since the previous message)."""
    _settle_background(context)
    _recover(context)
    try:
        return _train(msg, context)
    except Exception:
        # The worker kept alive may be half-way through the round: the next message must
        # start again from context.state, which still holds the last completed round.
        _LIVE.pop((context.run_id, context.node_id), None)
        raise


def _state_content(
    context: Context, *, with_model: bool = True
) -> dict[str, ArrayRecord | ConfigRecord]:
    """This worker's saved state as message records (an untrained worker: round 0);
    without the model when the message carries it anyway."""
    meta = context.state.config_records.get(STATE_META)
    if meta is None:
        return {messages.STATE_META: ConfigRecord({"round": 0, "steps": 0})}
    arrays = context.state.array_records[STATE_ARRAYS]
    if not with_model:
        arrays = ArrayRecord({k: a for k, a in arrays.items() if k != messages.MODEL})
    return {
        messages.STATE: arrays,
        messages.STATE_META: ConfigRecord({"round": meta["round"], "steps": meta["steps"]}),
    }


def _restore_state(msg: Message, context: Context) -> None:
    """Replace this node's state with the one a resumed run sends (round 0: no state)."""
    _LIVE.pop((context.run_id, context.node_id), None)
    meta = msg.content.config_records[messages.STATE_META]
    for records, key in (
        (context.state.array_records, STATE_ARRAYS),
        (context.state.config_records, STATE_META),
    ):
        records.pop(key, None)
    if int(meta["round"]):
        _install(context, msg.content.array_records[messages.STATE], meta["round"], meta["steps"])


@app.query("state")
def query_state(msg: Message, context: Context) -> Message:
    """This worker's whole state, for the server's checkpoint."""
    _settle_background(context)
    _recover(context)
    return Message(RecordDict(_state_content(context)), reply_to=msg)


def _train(msg: Message, context: Context) -> Message:
    config = messages.read_config(msg)
    header = msg.content.config_records[messages.HEADER]
    if messages.STATE_META in msg.content.config_records:
        _restore_state(msg, context)
    collected = _collected(context, header) if config.eager_reply else None
    if "round" not in header:  # eager: the message only collects the final round
        return Message(collected or RecordDict(), reply_to=msg)
    round_, steps = int(header["round"]), int(header["local-steps"])
    last = _last_round(context.state)
    adopt = bool(header.get("adopt", False))
    # eager: the server may take back a round it started before the sync it missed, and
    # send it again, adopting
    if round_ < last or (round_ == last and not (config.eager_reply and adopt)):
        raise ValueError(
            f"round {round_} sent to a worker whose last round was {last}: a stale, "
            "duplicate or out-of-order message"
        )
    update_rule = UpdateRule(str(header["update-rule"]))
    client_rule = ClientRule(str(header["client-rule"]))
    worker = _current_worker(config, context)
    init = messages.read_vector(msg, messages.INIT)
    mix = messages.read_vector(msg, messages.MIX)
    if init is not None:
        worker.load_vector(torch.from_numpy(init))
        worker.snapshot = worker.vector()
    elif adopt:
        if mix is None:
            raise ValueError(f"round {round_} asks to adopt a model it does not carry")
        worker.adopt(torch.from_numpy(mix), reset=bool(header.get("reset", False)))
    elif last == 0:
        raise ValueError(f"round {round_} is this worker's first and carries no model")
    elif "sync" in header:
        worker.apply_sync(
            float(header["self-weight"]),
            None if mix is None else torch.from_numpy(mix),
            client_rule,
            update_rule,
        )
    generator = workload.seeded_generator(config.seed, _node_partition(context)[0], round_)
    correction = client_rule is ClientRule.CORRECTION
    job = _Steps(round_, worker, config, correction, Future())
    if collected is not None and bool(context.node_config.get("background-steps", False)):
        job.outcome = _EXECUTOR.submit(_timed, worker, steps, update_rule, generator)
        _remember(_BACKGROUND, (context.run_id, context.node_id), job)
        return Message(collected, reply_to=msg)
    try:
        job.outcome.set_result(_timed(worker, steps, update_rule, generator))
    except Exception as exc:
        if collected is None:
            raise
        job.outcome.set_exception(exc)  # eager: reported when round_ is collected
    _finish(context, job)
    if collected is not None:
        return Message(collected, reply_to=msg)
    return Message(_report(context, bool(header.get("send-state", False))), reply_to=msg)


def _timed(
    worker: LocalWorker, steps: int, rule: UpdateRule, generator: torch.Generator
) -> tuple[float, float]:
    """(mean loss, seconds) of the round's local steps: a device's compute time per round,
    next to the wall time per round the server sees."""
    start = time.perf_counter()
    loss = worker.run(steps, rule, generator)
    return loss, time.perf_counter() - start


def _finish(context: Context, job: _Steps) -> None:
    """Keep the outcome of a round's local steps in context.state: the worker after them,
    or (eager replies) why they failed, for the message that collects the round."""
    try:
        loss, seconds = job.outcome.result()
    except Exception as exc:
        _LIVE.pop((context.run_id, context.node_id), None)  # half-way through the round
        reason = "".join(traceback.format_exception(exc))
        context.state[FAILURE] = ConfigRecord({"round": job.round, "reason": reason})
        return
    x = job.worker.vector().cpu().numpy()
    _save(
        job.worker,
        x,
        context,
        job.config,
        job.round,
        loss=loss,
        seconds=seconds,
        keep_snapshot=job.keep_snapshot,
    )


def _settle_background(context: Context) -> None:
    """Wait for this node's background steps, if any, and keep their outcome."""
    job = _BACKGROUND.pop((context.run_id, context.node_id), None)
    if job is not None:
        job.outcome.exception()  # waits
        _finish(context, job)


def _collected(context: Context, header: ConfigRecord) -> RecordDict:
    """Eager replies: the reply that reports round `collect` of the header (0: none)."""
    want = int(header["collect"])
    if not want:
        return RecordDict()
    held = _last_round(context.state)
    failure = context.state.config_records.get(FAILURE)
    if failure is not None and int(failure["round"]) == want:
        raise RuntimeError(f"the local steps of round {want} failed:\n{failure['reason']}")
    if held != want:
        raise ValueError(
            f"asked for the model of round {want}, but this worker holds round {held}: its "
            "local steps of that round were lost (did the ClientApp process restart?)"
        )
    return _report(context, bool(header.get("send-state", False)))


def _report(context: Context, send_state: bool) -> RecordDict:
    """The reply content for the round context.state holds: its model, training loss and
    compute seconds, and with `send_state` the whole state, for a checkpoint."""
    meta = context.state.config_records[STATE_META]
    x = context.state.array_records[STATE_ARRAYS][messages.MODEL].numpy()
    nan = float("nan")  # a state restored from elsewhere does not know them
    metrics = {
        "train-loss": float(meta.get("loss", nan)),
        "compute-time": float(meta.get("seconds", nan)),
        "round": int(meta["round"]),
    }
    content = messages.reply_content(messages.vector_record(**{messages.MODEL: x}), metrics)
    if send_state:
        for key, record in _state_content(context, with_model=False).items():
            content[key] = record
    return content


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Loss and accuracy of this worker's own current model on the test set."""
    _settle_background(context)
    _recover(context)
    config = messages.read_config(msg)
    worker = _current_worker(config, context)
    _, test = workload.load_split(config)
    loss, accuracy = evaluate(worker.model, test)
    metrics = {"loss": loss, "num-examples": len(test)}
    if not np.isnan(accuracy):
        metrics["accuracy"] = accuracy
    return Message(RecordDict({messages.METRICS: MetricRecord(metrics)}), reply_to=msg)
