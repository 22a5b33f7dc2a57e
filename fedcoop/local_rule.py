"""The worker side of every rule, written once as functions over a batch of workers.

A worker is its flat state (`WorkerState`: the model vector x_i in the layout of
`fedcoop.model_vectors.model_vector`, its optimizer state (momentum), CoCoD snapshot and Remark-1
held-back gradient, and its count of local steps); `LocalRule` holds what the workers of one
run share (the model's layout, the optimizer's settings, the learning-rate schedule, the
augmentation) and applies a sync, or runs tau local steps, to any number of workers at once.
The Flower ClientApp runs it on a batch of one; the vectorized engine on the round's whole
cohort, one `torch.func.vmap` over the stacked parameters per step. Each worker draws its
batches from its own generator exactly as it would alone, so the batch changes the speed, not
the models.

The optimizer is the one `fedcoop.optimizers` declaration the reference runs too: its terms
are added to each gradient where it is taken (so that a gradient held back under Remark 1
includes the terms of the unmixed model, their anchor the worker's model at the round's
start), its transforms turn the gradient and the worker's state arrays into the direction d
when the step is applied, and x <- x - lr d. Every piece is element-wise, so a worker's result
does not depend on its neighbours in the batch.

Models with buffers that training updates in place (BatchNorm's running statistics) cannot
run under `vmap` as they are; their gradients are taken one worker at a time, with each
worker's own statistics as the buffers, so they run (correctly, without the batch speed-up)
wherever the others do.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from fedcoop.augment import Augmentation
from fedcoop.data import ArrayDataset
from fedcoop.model_vectors import evaluate, layout, load_model_vector, model_vector
from fedcoop.optimizers import LocalSGD
from fedcoop.spec import ClientRule, UpdateRule

#: bytes of mini-batch inputs gathered at once for a group of workers
_GATHER_BYTES = 64 * 2**20


@dataclass
class WorkerState:
    """Worker i between messages: flat tensors on the rule's device.

    The optimizer's state arrays (``opt_state``, by the names its transforms declare) and
    ``pending`` span the parameters only (the layout of ``model.parameters()``); ``x`` and
    ``snapshot`` every floating-point state entry.
    """

    data: ArrayDataset
    x: torch.Tensor
    opt_state: dict[str, torch.Tensor] = field(default_factory=dict)
    snapshot: torch.Tensor | None = None
    pending: torch.Tensor | None = None
    #: local steps applied so far; the next one is step `steps_done + 1` of the schedule
    steps_done: int = 0


class LocalRule:
    """The local optimizer and the client half of the sync rules, for a run's workers.

    Some 400 lines as one class: the sync, the steps and the batch plumbing (stacked
    mini-batches, the functional model, vmapped gradients) share the model's layout and the
    device; the optimizer's arithmetic lives in `fedcoop.optimizers`, not here.
    """

    def __init__(
        self,
        model: nn.Module,
        sgd: LocalSGD,
        device: torch.device,
        dtype: torch.dtype,
        *,
        loss_fn: nn.Module,
        lr_at: Callable[[int], float] | None = None,
        augment: Augmentation | None = None,
        local_buffers: bool = False,
    ) -> None:
        """`local_buffers` (bn-stats = local): a sync and a model the server sends replace
        the parameters only; each worker keeps its own buffers (BatchNorm statistics)."""
        self.device = device
        #: a template only: the workers' values are passed in with every call
        self._model = model.to(device=device, dtype=dtype)
        self.dtype = dtype
        self.sgd = sgd
        self.lr_at = lr_at or (lambda _: sgd.lr)
        self.augment = augment
        self.loss_fn = loss_fn
        entries = [(k, t) for k, t in self._model.state_dict().items() if t.is_floating_point()]
        #: the model vector's entries by name and shape (Flower's ArrayRecords name them)
        self.layout = layout(self._model)
        params = dict(self._model.named_parameters())
        offsets, start = {}, 0
        for name, t in entries:
            offsets[name] = (start, t.numel(), t.shape)
            start += t.numel()
        self._names = list(params)
        self._shapes = [params[k].shape for k in self._names]
        self._sizes = [params[k].numel() for k in self._names]
        self._buffers = [(k, offsets[k]) for k, _ in entries if k not in params]
        #: entries of x that are parameters (None: all of them, in order)
        if [k for k, _ in entries] == self._names:
            self._index: torch.Tensor | None = None
        else:
            self._index = torch.cat(
                [torch.arange(offsets[k][0], offsets[k][0] + offsets[k][1]) for k in self._names]
            ).to(device)
        #: entries of x that a sync leaves as the worker's own (None: none)
        self._kept: torch.Tensor | None = None
        if local_buffers and self._buffers:
            self._kept = torch.cat(
                [torch.arange(start, start + size) for _, (start, size, _) in self._buffers]
            ).to(device)
        # Read now: while functional_call runs, the template holds another thread's
        # transformed tensors, and touching them from outside corrupts that transform.
        self._blank = model_vector(self._model)
        #: the template module is swapped in and out by functional_call: one caller at a time
        self._lock = threading.Lock()
        self._losses = vmap(self._loss)

    @property
    def batched(self) -> bool:
        """True when a batch of workers takes its gradients in one vmap (no buffers)."""
        return not self._buffers

    # -- workers --------------------------------------------------------------------------
    def worker(self, data: ArrayDataset, x: torch.Tensor | None = None) -> WorkerState:
        """A worker holding `data` (kept on the device for good) and starting from `x` (by
        default the template's own values, taken before any worker's were swapped in)."""
        data = ArrayDataset(x=data.x.to(self.device), y=data.y.to(self.device))
        return WorkerState(data=data, x=self.vector(self._blank if x is None else x))

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of a flat vector on the rule's device, in its dtype."""
        return self._here(x).clone()

    def _here(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the rule's device, in its dtype (no copy when it already is)."""
        return x.to(device=self.device, dtype=self.dtype)

    def opt_state_of(self, worker: WorkerState) -> dict[str, torch.Tensor]:
        """The worker's optimizer state by the names its optimizer declares, zeros for an
        array it does not hold yet (before its first step), as the step itself reads it."""
        return {
            name: worker.opt_state[name]
            if name in worker.opt_state
            else torch.zeros_like(self.parameters_of(worker.x))
            for name in self.sgd.optimizer.state_names
        }

    def set_state(self, worker: WorkerState, name: str, value: torch.Tensor) -> None:
        """Set the worker's optimizer state array `name` to one the server sent (SCAFFOLD's
        c); ValueError if the optimizer keeps no such array or its shape is not the
        parameters'."""
        if name not in self.sgd.optimizer.state_names:
            raise ValueError(f"the message carries {name!r}, which this run's optimizer lacks")
        shape = self.parameters_of(worker.x).shape
        if value.shape != shape:
            raise ValueError(f"{name!r} of shape {tuple(value.shape)}, not {tuple(shape)}")
        worker.opt_state[name] = self.vector(value)

    def parameters_of(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter entries of model vectors (the last dimension), in parameter order."""
        return x if self._index is None else x.index_select(-1, self._index)

    def evaluate(self, x: torch.Tensor, test: ArrayDataset) -> tuple[float, float]:
        """(loss, accuracy) of the model vector `x` (a worker's own) on `test`."""
        with self._lock:
            load_model_vector(self._model, x)
            return evaluate(self._model, test)

    # -- the rules --------------------------------------------------------------------------
    def apply_sync(
        self,
        workers: Sequence[WorkerState],
        self_weights: Sequence[float],
        mixes: Sequence[torch.Tensor | None],
        client_rule: ClientRule,
        update_rule: UpdateRule,
    ) -> None:
        """Apply each worker's part of a sync, then any step held back for it.

        MIX: x_i <- w_ii x_i + mix_i. CORRECTION (CoCoD-SGD): x_i <- avg + x_i - snapshot_i,
        snapshot_i <- x_i. Under Remark 1 the gradient held back at the last step is then
        applied to the mixed model.
        """
        if not workers:
            return
        for w, mix in zip(workers, mixes, strict=True):
            self.check_sync(w, mix, client_rule, update_rule)
        x = torch.stack([w.x for w in workers])
        if client_rule is ClientRule.CORRECTION:
            avg = torch.stack([self._here(m) for m in mixes])  # type: ignore[arg-type]
            x = avg + x - torch.stack([w.snapshot for w in workers])  # type: ignore[misc]
            for w, row in zip(workers, x.unbind(0), strict=True):
                w.snapshot = row.clone()
        else:
            weights = torch.tensor(self_weights, dtype=self.dtype, device=self.device)
            x = weights[:, None] * x
            for b, mix in enumerate(mixes):
                if mix is not None:
                    x[b] = x[b] + self._here(mix)
        if update_rule is UpdateRule.MIX_BEFORE_STEP:
            pending = torch.stack([w.pending for w in workers])  # type: ignore[misc]
            x = self._step(workers, x, pending)
            for w in workers:
                w.pending = None
        for w, row in zip(workers, x.unbind(0), strict=True):
            w.x = self._keeping_own(w, row)

    def _keeping_own(self, worker: WorkerState, x: torch.Tensor) -> torch.Tensor:
        """`x` as the worker's new model, with its own buffers where they stay local."""
        if self._kept is None:
            return x
        return x.index_copy(0, self._kept, worker.x.index_select(0, self._kept))

    def receive(self, worker: WorkerState, x: torch.Tensor) -> None:
        """Take a model the server sent as the worker's (a stock strategy's global model),
        keeping its own buffers where they stay local."""
        worker.x = self._keeping_own(worker, self.vector(x))

    @staticmethod
    def check_sync(
        worker: WorkerState,
        mix: torch.Tensor | None,
        client_rule: ClientRule,
        update_rule: UpdateRule,
    ) -> None:
        """Refuse a sync the worker cannot apply (before any worker of a batch changes)."""
        if client_rule is ClientRule.CORRECTION and (mix is None or worker.snapshot is None):
            raise ValueError("CoCoD-SGD correction needs the stale average and a snapshot")
        if update_rule is UpdateRule.MIX_BEFORE_STEP and worker.pending is None:
            raise ValueError("a mix-before-step sync needs the gradient of the last step")

    def adopt(self, worker: WorkerState, x: torch.Tensor, *, reset: bool) -> None:
        """Take `x` as the worker's model after a sync it missed: what it held back for that
        sync (a pending gradient, a CoCoD snapshot) no longer applies (local buffers stay the
        worker's own, as in a sync); `reset` (its last
        update was rejected) also clears the optimizer state (momentum) it was made with."""
        self.receive(worker, x)
        worker.pending = None
        worker.snapshot = worker.x.clone()
        if reset:
            worker.opt_state.clear()

    def run(
        self,
        workers: Sequence[WorkerState],
        steps: int,
        update_rule: UpdateRule,
        generators: Sequence[torch.Generator],
    ) -> list[float]:
        """The local steps of one round on every worker; each one's mean training loss.

        Under Remark 1 the last step's gradient is only computed here and applied after the
        next sync, so the reported model is the one it was taken at. Workers whose batches
        differ in shape (full-batch gradients on shards of different sizes) run in groups.
        """
        if steps == 0:
            return [math.nan] * len(workers)
        groups: dict[tuple[bool, int], list[int]] = {}
        for b, w in enumerate(workers):
            groups.setdefault(self._batch_shape(w), []).append(b)
        losses = [math.nan] * len(workers)
        for members in groups.values():
            out = self._run_group(
                [workers[b] for b in members], steps, update_rule, [generators[b] for b in members]
            )
            for b, loss in zip(members, out, strict=True):
                losses[b] = loss
        return losses

    # -- internals --------------------------------------------------------------------------
    def _batch_shape(self, worker: WorkerState) -> tuple[bool, int]:
        """(full batch?, rows per batch): workers that share it can be stacked step by step."""
        n, size = len(worker.data), self.sgd.batch_size
        return (True, n) if size == 0 or size >= n else (False, size)

    def _run_group(
        self,
        workers: Sequence[WorkerState],
        steps: int,
        update_rule: UpdateRule,
        generators: Sequence[torch.Generator],
    ) -> list[float]:
        indices = [self._batches(w, steps, g) for w, g in zip(workers, generators, strict=True)]
        x = torch.stack([w.x for w in workers])
        optimizer = self.sgd.optimizer
        if optimizer.ends_rounds and update_rule is UpdateRule.MIX_BEFORE_STEP:
            raise ValueError("a round-end piece (SCAFFOLD's) needs the mix-after-step rule")
        first_step = [w.steps_done for w in workers]
        # the round's start: the anchor of the optimizer's terms (FedProx's x^t)
        anchor = self.parameters_of(x)
        losses: list[list[float]] = [[] for _ in workers]
        batches = self._stacked_batches(workers, indices)
        for k in range(steps):
            inputs, targets = next(batches)
            if self.augment is not None:
                inputs = torch.stack(
                    [self.augment(xb, g) for xb, g in zip(inputs, generators, strict=True)]
                )
            grads, values = self._gradients(x, inputs, targets)
            if optimizer.terms:
                grads = optimizer.gradient(grads, self.parameters_of(x), anchor)
            for b, value in enumerate(values.tolist()):
                losses[b].append(value)
            if update_rule is UpdateRule.MIX_BEFORE_STEP and k == steps - 1:
                for w, g in zip(workers, grads.unbind(0), strict=True):
                    w.pending = g
            else:
                x = self._step(workers, x, grads)
        if optimizer.ends_rounds:
            x = self._end_round(workers, anchor, x, first_step, steps)
        for w, row in zip(workers, x.unbind(0), strict=True):
            w.x = row
        return [sum(values) / len(values) for values in losses]

    def _end_round(
        self,
        workers: Sequence[WorkerState],
        start: torch.Tensor,
        x: torch.Tensor,
        first_step: Sequence[int],
        steps: int,
    ) -> torch.Tensor:
        """The optimizer's round-end pieces on the parameters (SCAFFOLD's control update and
        global step, FedNova's normalisation): their new state arrays, and x with the
        parameters they report."""
        lr_sum = torch.tensor(
            [[sum(self.lr_at(s + k) for k in range(1, steps + 1))] for s in first_step],
            dtype=self.dtype,
            device=self.device,
        )
        end, changed = self.sgd.optimizer.end_round(
            start, self.parameters_of(x), lr_sum, steps, self._stacked_state(workers, start[0])
        )
        for name, rows in changed.items():
            for w, row in zip(workers, rows.unbind(0), strict=True):
                w.opt_state[name] = row
        if self._index is None:
            return end
        out = x.clone()
        out[:, self._index] = end
        return out

    def _stacked_batches(
        self, workers: Sequence[WorkerState], indices: Sequence[list[torch.Tensor | None]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every step's (inputs, targets) of the group, B x batch x ...: gathered with one
        index per worker for a chunk of steps (about _GATHER_BYTES at a time) rather than
        one per worker and step, which costs more than the step itself for small models."""
        steps = len(indices[0])
        if indices[0][0] is None:  # full batches (the whole group): the same every step
            inputs = torch.stack([w.data.x for w in workers])
            targets = torch.stack([w.data.y for w in workers])
            for _ in range(steps):
                yield inputs, targets
            return
        first = workers[0].data.x
        per_step = len(workers) * len(indices[0][0]) * first[0].numel() * first.element_size()
        chunk = max(1, _GATHER_BYTES // max(1, per_step))
        for start in range(0, steps, chunk):
            stop = min(steps, start + chunk)
            picks = [torch.cat(idx[start:stop]) for idx in indices]  # type: ignore[arg-type]
            xs = torch.stack([w.data.x[p] for w, p in zip(workers, picks, strict=True)])
            ys = torch.stack([w.data.y[p] for w, p in zip(workers, picks, strict=True)])
            xs = xs.view(len(workers), stop - start, -1, *xs.shape[2:])
            ys = ys.view(len(workers), stop - start, -1, *ys.shape[2:])
            for k in range(stop - start):
                yield xs[:, k], ys[:, k]

    def _step(
        self, workers: Sequence[WorkerState], x: torch.Tensor, grads: torch.Tensor
    ) -> torch.Tensor:
        """One optimizer step of every worker at its own scheduled learning rate."""
        lr = torch.tensor(
            [self.lr_at(w.steps_done + 1) for w in workers], dtype=self.dtype, device=self.device
        )[:, None]
        optimizer = self.sgd.optimizer
        direction, state = optimizer.direction(grads, self._stacked_state(workers, grads[0]))
        for name, rows in state.items():
            for w, row in zip(workers, rows.unbind(0), strict=True):
                w.opt_state[name] = row
        for w in workers:
            w.steps_done += 1
        params = torch.addcmul(self.parameters_of(x), lr, direction, value=-1.0)
        if self._index is None:
            return params
        out = x.clone()
        out[:, self._index] = params
        return out

    def _stacked_state(
        self, workers: Sequence[WorkerState], like: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The workers' optimizer state arrays as rows, zeros (shaped like `like`, one row
        of parameters) for those not held yet: read on every step, so one zero serves."""
        names = self.sgd.optimizer.state_names
        if not names:
            return {}
        zero = torch.zeros_like(like)
        return {name: torch.stack([w.opt_state.get(name, zero) for w in workers]) for name in names}

    def _loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one worker's flat parameters on its batch (what vmap maps)."""
        return self.loss_fn(functional_call(self._model, self._unflatten(params), (x,)), y)

    def _unflatten(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of one worker's flat parameters, shaped as the model's."""
        pieces = params.split(self._sizes)
        return {
            name: t.view(shape)
            for name, t, shape in zip(self._names, pieces, self._shapes, strict=True)
        }

    def _gradients(
        self, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient over the parameters, loss) of every worker on its batch; a model with
        buffers updates each worker's own buffers (rows of x) in place.

        A batch's losses are one vmap of the loss over the stacked parameters, and their
        gradients one backward pass of their sum: each worker's loss reads only its own
        row, so that row's gradient is the worker's own. (torch.func's grad transform
        inside the vmap is about as fast on this project's CPU, but its first call imports
        torch._dynamo, 150 MB of a device's memory.) One worker (a ClientApp's batch) skips
        the vmap, which has nothing to vectorize there."""
        params = self.parameters_of(x)
        with self._lock:
            self._model.train()
            if self.batched and len(params) > 1:
                stacked = params.detach().requires_grad_(True)
                values = self._losses(stacked, inputs, targets)
                (grads,) = torch.autograd.grad(values.sum(), stacked)
                return grads, values.detach()
            grads, values = [], []
            for b in range(len(params)):
                p = params[b].detach().requires_grad_(True)
                tensors = self._unflatten(p)
                for name, (start, size, shape) in self._buffers:
                    tensors[name] = x[b, start : start + size].view(shape)
                out = functional_call(self._model, tensors, (inputs[b],))
                loss = self.loss_fn(out, targets[b])
                (g,) = torch.autograd.grad(loss, p)
                grads.append(g)
                values.append(loss.detach())
            return torch.stack(grads), torch.stack(values)

    def _batches(
        self, worker: WorkerState, steps: int, generator: torch.Generator
    ) -> list[torch.Tensor | None]:
        """Mini-batch indices for `steps` steps: consecutive slices of seeded permutations
        (None: the whole shard)."""
        full, size = self._batch_shape(worker)
        if full:
            return [None] * steps
        n = len(worker.data)
        out: list[torch.Tensor | None] = []
        perm = torch.randperm(n, generator=generator)
        pos = 0
        for _ in range(steps):
            if pos + size > n:
                perm, pos = torch.randperm(n, generator=generator), 0
            out.append(perm[pos : pos + size].to(self.device))
            pos += size
        return out
