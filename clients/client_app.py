"""The stateful Flower ClientApp: one Cooperative SGD worker.

Between messages the worker keeps, in ``context.state``, its model x_i, its momentum
buffers, its CoCoD-SGD snapshot, the gradient held back under Remark 1 and the last round it
ran, so that a round picks up exactly where the previous one stopped
(`clients.worker_state`). Each train message applies the previous round's sync (the payload
the server computed from the worker's column of W), then runs tau local SGD steps and
replies with the model. The header says which rules apply, so a worker never needs the
matrix itself. With ``state-dir`` in the SuperNode's node config, the state is also written
to the device after every round, so that a SuperNode that dies and restarts mid-run (with an
empty context.state) resumes from its own last round.

With `eager-reply`, a message's reply carries the model of the round the worker ran since
the previous message, and the new round's local steps run after it (`clients.eager`, whose
`BackgroundSteps` this module's `BACKGROUND` owns).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import eager, messages, standard, worker_state
from clients.worker_state import FAILURE
from fedcoop import algorithms, workload
from fedcoop.config import RunConfig
from fedcoop.local_rule import LocalRule, WorkerState
from fedcoop.optimizers import SERVER_CONTROL
from fedcoop.spec import ClientRule, UpdateRule

LOG = logging.getLogger("flwr.fedcoop")


app = ClientApp()
#: the local steps that run after their reply (eager replies, node config background-steps)
BACKGROUND = eager.BackgroundSteps()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake: which column of W this node is, and how many samples it holds."""
    config = messages.read_config(msg)
    partition_id, num_partitions = worker_state.node_partition(context)
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
    (reply,) = train_many([(msg, context)])
    if isinstance(reply, Exception):
        raise reply
    return reply


#: serves a batch of train messages, each to its node's context (a reply or its exception)
TrainMany = Callable[[Sequence[tuple[Message, Context]]], list[Message | Exception]]


def train_many(
    batch: Sequence[tuple[Message, Context]], *, with_mods: bool = True
) -> list[Message | Exception]:
    """The replies to train messages of several nodes of this process, each to its own
    context: every message is read and checked alone, then their syncs and local steps run
    as batches of the local rule. A message that cannot be served gets its exception in
    place of a reply, and the others go on. A stock strategy's message under client-mods
    runs alone through its mods (`with_mods`: whether they still have to run), since each
    mod wraps one reply."""
    out: list[Message | Exception | None] = [None] * len(batch)
    jobs: list[tuple[int, _Train]] = []
    for k, (msg, context) in enumerate(batch):
        try:
            if with_mods and (mods := _mods_of(msg)):
                out[k] = standard.with_mods(msg, context, _train_alone, mods)
                continue
            _settle_background(context)
            worker_state.recover(context)
            prepared = _prepare(msg, context)
        except Exception as exc:
            worker_state.forget(context)
            out[k] = exc
            continue
        if isinstance(prepared, Message):
            out[k] = prepared
        else:
            jobs.append((k, prepared))
    _apply_syncs([t for _, t in jobs])
    _run_steps([t for _, t in jobs if not t.background])
    for k, t in jobs:
        try:
            out[k] = _complete(t)
        except Exception as exc:
            worker_state.forget(t.context)
            out[k] = exc
    assert all(reply is not None for reply in out)
    return out  # type: ignore[return-value]


def _mods_of(msg: Message) -> tuple[standard.Mod, ...]:
    """The Flower mods a stock strategy's train message runs under (client-mods)."""
    return standard.mods(standard.read(msg).config) if standard.is_standard(msg) else ()


def _train_alone(msg: Message, context: Context) -> Message:
    """The reply to one train message, inside its mods (the innermost handler)."""
    (reply,) = train_many([(msg, context)], with_mods=False)
    if isinstance(reply, Exception):
        raise reply
    return reply


@app.query("state")
def query_state(msg: Message, context: Context) -> Message:
    """This worker's whole state, for the server's checkpoint."""
    _settle_background(context)
    worker_state.recover(context)
    return Message(messages.reply_content(worker_state.snapshot(context).entries()), reply_to=msg)


@dataclass
class _Train:
    """A train message read and checked, its sync and local steps still to run."""

    msg: Message
    context: Context
    job: eager.Steps
    steps: int
    update_rule: UpdateRule
    client_rule: ClientRule
    generator: torch.Generator
    #: (self weight, mix) of the sync to apply first (None: no sync)
    sync: tuple[float, torch.Tensor | None] | None
    #: eager replies: what the reply reports (the round run since the previous message)
    collected: RecordDict | None
    send_state: bool
    #: eager replies: run the steps in this process's background, after the reply
    background: bool
    #: why the sync or the steps failed
    failure: Exception | None = None
    #: a stock strategy's message: the key its reply's ArrayRecord keeps (None: fedcoop's)
    standard_key: str | None = None


def _prepare(msg: Message, context: Context) -> Message | _Train:
    """Read a train message against the worker's state: the reply at once (an eager
    message that only collects), or the work to do; raises on a message it must refuse."""
    if standard.is_standard(msg):
        return _prepare_standard(msg, context)
    config = messages.read_config(msg)
    header, init, mix = messages.read_train(msg)
    if header.restore is not None:
        worker_state.restore(header.restore, context)
    collected = None
    if config.eager_reply:
        collected = eager.collected(context, header.collect or 0, header.send_state)
    if header.round is None:  # eager: the message only collects the final round
        return Message(collected or RecordDict(), reply_to=msg)
    round_ = header.round
    last = worker_state.last_round(context.state)
    # eager: the server may take back a round it started before the sync it missed, and
    # send it again, adopting
    if round_ < last or (round_ == last and not (config.eager_reply and header.adopt)):
        raise ValueError(
            f"round {round_} sent to a worker whose last round was {last}: a stale, "
            "duplicate or out-of-order message"
        )
    update_rule = UpdateRule(header.update_rule)
    client_rule = ClientRule(header.client_rule)
    rule = worker_state.rule_for(config)
    worker = worker_state.current_worker(config, context)
    sync = None
    if init is not None:
        worker.x = rule.vector(torch.from_numpy(init))
        worker.snapshot = worker.x.clone()
    elif header.adopt:
        if mix is None:
            raise ValueError(f"round {round_} asks to adopt a model it does not carry")
        rule.adopt(worker, torch.from_numpy(mix), reset=header.reset)
    elif last == 0:
        raise ValueError(f"round {round_} is this worker's first and carries no model")
    elif header.sync is not None:
        sync = (header.self_weight, None if mix is None else torch.from_numpy(mix))
        rule.check_sync(worker, sync[1], client_rule, update_rule)
    control = messages.read_vector(messages.train_record(msg), messages.CONTROL)
    if control is not None:  # SCAFFOLD: the server's c for this round's steps
        rule.set_state(worker, SERVER_CONTROL, torch.from_numpy(control))
    partition = worker_state.node_partition(context)[0]
    generator = workload.seeded_generator(config.seed, partition, round_)
    correction = client_rule is ClientRule.CORRECTION
    evaluate = header.local_steps > 0 and workload.evaluated_locally(config, partition)
    return _Train(
        msg,
        context,
        eager.Steps(round_, worker, config, correction, Future(), evaluate),
        header.local_steps,
        update_rule,
        client_rule,
        generator,
        sync,
        collected,
        header.send_state,
        background=collected is not None
        and bool(context.node_config.get("background-steps", False)),
    )


def _prepare_standard(msg: Message, context: Context) -> _Train:
    """A stock strategy's train message: the model it carries replaces the worker's (as a
    fedcoop round 1 does), then the round's tau local steps; the worker's optimizer state
    and step count carry on, as they do under fedcoop's own syncs."""
    received = standard.read(msg)
    config, round_ = received.config, received.round
    last = worker_state.last_round(context.state)
    if round_ <= last:
        raise ValueError(
            f"server-round {round_} sent to a worker whose last round was {last}: a stale, "
            "duplicate or out-of-order message"
        )
    rule = worker_state.rule_for(config)
    worker = worker_state.current_worker(config, context)
    vector = torch.from_numpy(received.vector(rule.layout))
    if last:
        rule.receive(worker, vector)
    else:  # its first model, buffers included
        worker.x = rule.vector(vector)
    partition = worker_state.node_partition(context)[0]
    generator = workload.seeded_generator(config.seed, partition, round_)
    evaluate = workload.evaluated_locally(config, partition)
    return _Train(
        msg,
        context,
        eager.Steps(round_, worker, config, False, Future(), evaluate),
        taus[partition] if (taus := algorithms.worker_steps(config)) else config.tau,
        UpdateRule.MIX_AFTER_STEP,
        ClientRule.MIX,
        generator,
        sync=None,
        collected=None,
        send_state=False,
        background=False,
        standard_key=received.arrays_key,
    )


def _groups(trains: Sequence[_Train], key: Callable[[_Train], Hashable]) -> list[list[_Train]]:
    """`trains` in groups of equal `key`, in order of first appearance."""
    out: dict[Hashable, list[_Train]] = {}
    for t in trains:
        out.setdefault(key(t), []).append(t)
    return list(out.values())


def _apply_syncs(trains: Sequence[_Train]) -> None:
    """Apply the pending syncs, a batch of the rule per kind of sync."""
    with_sync = [t for t in trains if t.sync is not None]
    for group in _groups(with_sync, lambda t: (t.job.config, t.client_rule, t.update_rule)):
        try:
            worker_state.rule_for(group[0].job.config).apply_sync(
                [t.job.worker for t in group],
                [t.sync[0] for t in group],  # type: ignore[index]
                [t.sync[1] for t in group],  # type: ignore[index]
                group[0].client_rule,
                group[0].update_rule,
            )
        except Exception as exc:
            for t in group:
                t.failure = exc


def _run_steps(trains: Sequence[_Train]) -> None:
    """Run the local steps, a batch of the rule per (config, steps, rule); each message's
    compute time is its share of its batch's seconds."""
    ready = [t for t in trains if t.failure is None]
    for group in _groups(ready, lambda t: (t.job.config, t.steps, t.update_rule)):
        first = group[0]
        try:
            losses, seconds = _timed(
                worker_state.rule_for(first.job.config),
                [t.job.worker for t in group],
                first.steps,
                first.update_rule,
                [t.generator for t in group],
            )
        except Exception as exc:
            for t in group:
                t.job.outcome.set_exception(exc)
            continue
        for t, loss in zip(group, losses, strict=True):
            t.job.outcome.set_result((loss, seconds / len(group)))


def _complete(t: _Train) -> Message:
    """The reply of a prepared message whose sync and steps have run (or fail)."""
    if t.failure is not None:
        raise t.failure
    context, job = t.context, t.job
    if t.background:
        run = partial(_single, job.config, job.worker, t.steps, t.update_rule, t.generator)
        BACKGROUND.submit(context, job, run)
        return Message(t.collected, reply_to=t.msg)  # type: ignore[arg-type]
    if t.collected is None:
        job.outcome.result()  # raises why the steps failed
    # eager: a failure is kept in context.state and reported when round_ is collected
    _finish(context, job)
    if t.collected is not None:
        return Message(t.collected, reply_to=t.msg)
    if t.standard_key is not None:
        meta = context.state.config_records[worker_state.STATE_META]
        metrics = {
            "num-examples": len(job.worker.data),
            "train-loss": float(meta["loss"]),
            "compute-time": float(meta["seconds"]),
        }
        if job.config.eval_local_workers:  # Flower averages only replies of equal keys
            metrics |= {k: float(meta.get(k, math.nan)) for k in messages.LOCAL_EVALUATION}
        rule = worker_state.rule_for(job.config)
        vector = job.worker.x.detach().cpu().numpy()
        return standard.train_reply(t.msg, t.standard_key, vector, rule.layout, metrics)
    return Message(worker_state.report(context, t.send_state), reply_to=t.msg)


def _timed(
    rule: LocalRule,
    workers: Sequence[WorkerState],
    steps: int,
    update_rule: UpdateRule,
    generators: Sequence[torch.Generator],
) -> tuple[list[float], float]:
    """(mean loss per worker, seconds) of a round's local steps: a device's compute time
    per round, next to the wall time per round the server sees."""
    start = time.perf_counter()
    losses = rule.run(workers, steps, update_rule, generators)
    return losses, time.perf_counter() - start


def _single(
    config: RunConfig,
    worker: WorkerState,
    steps: int,
    update_rule: UpdateRule,
    generator: torch.Generator,
) -> tuple[float, float]:
    """(mean loss, seconds) of one worker's local steps (in the background)."""
    (loss,), seconds = _timed(
        worker_state.rule_for(config), [worker], steps, update_rule, [generator]
    )
    return loss, seconds


def _finish(context: Context, job: eager.Steps) -> None:
    """Keep the outcome of a round's local steps in context.state: the worker after them,
    or (eager replies) why they failed, for the message that collects the round."""
    try:
        loss, seconds = job.outcome.result()
    except Exception as exc:
        worker_state.forget(context)  # half-way through the round
        reason = "".join(traceback.format_exception(exc))
        context.state[FAILURE] = ConfigRecord({"round": job.round, "reason": reason})
        return
    worker_state.save(
        job.worker,
        context,
        job.config,
        job.round,
        loss=loss,
        seconds=seconds,
        keep_snapshot=job.keep_snapshot,
        evaluation=_local_evaluation(job) if job.evaluate else None,
    )


def _local_evaluation(job: eager.Steps) -> dict[str, float]:
    """The worker's own model after its steps on the evaluation sample (its own BatchNorm
    statistics included): the reply's local-test-* entries."""
    rule = worker_state.rule_for(job.config)
    loss, accuracy = rule.evaluate(job.worker.x, workload.eval_sample(job.config))
    out = {"local-test-loss": loss}
    return out if math.isnan(accuracy) else out | {"local-test-accuracy": accuracy}


def _settle_background(context: Context) -> None:
    """Wait for this node's background steps, if any, and keep their outcome."""
    job = BACKGROUND.take(context)
    if job is not None:
        _finish(context, job)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Loss and accuracy of this worker's own current model on the run's evaluation sample
    of the test set (`workload.eval_sample`); for a stock strategy's message, of the
    model it carries."""
    _settle_background(context)
    worker_state.recover(context)
    if standard.is_standard(msg):
        received = standard.read(msg)
        config = received.config
        x = torch.from_numpy(received.vector(worker_state.rule_for(config).layout))
    else:
        config = messages.read_config(msg)
        x = worker_state.current_worker(config, context).x
    test = workload.eval_sample(config)
    loss, accuracy = worker_state.rule_for(config).evaluate(x, test)
    metrics = {"loss": loss, "num-examples": len(test)}
    if not np.isnan(accuracy):
        metrics["accuracy"] = accuracy
    return Message(RecordDict({messages.METRICS: MetricRecord(metrics)}), reply_to=msg)
