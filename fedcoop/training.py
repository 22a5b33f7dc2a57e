"""Local training of one worker: tau SGD steps and the client side of each sync rule.

The worker's model is handled as one flat vector (every floating-point entry of its
state_dict, in order), because that is what the mixing rules act on: x_i <- w_ii x_i + mix.
Weight decay is folded into the gradient here instead of into torch's optimizer, so that a
gradient taken before a sync (Remark 1) includes the decay of the unmixed model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedcoop.augment import Augmentation
from fedcoop.cooperative import ClientRule, UpdateRule
from fedcoop.data import ArrayDataset


def _entries(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def model_vector(model: nn.Module) -> torch.Tensor:
    """Every floating-point entry of the model's state, flat: the x that the rules mix."""
    return torch.cat([t.detach().reshape(-1) for t in _entries(model)])


@torch.no_grad()
def load_model_vector(model: nn.Module, vec: torch.Tensor) -> None:
    """Overwrite the model from a vector laid out as `model_vector` lays it out."""
    entries = _entries(model)
    total = sum(t.numel() for t in entries)
    if vec.numel() != total:
        raise ValueError(f"model vector has {vec.numel()} entries, the model {total}")
    vec = vec.to(entries[0].device)
    offset = 0
    for t in entries:
        t.copy_(vec[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loss_function(dataset: ArrayDataset) -> nn.Module:
    """Cross-entropy for class labels; half mean squared error for real targets."""
    if dataset.y.is_floating_point():
        return _HalfMSE()
    return nn.CrossEntropyLoss()


class _HalfMSE(nn.Module):
    """(1/2n) ||Xw - y||^2, whose gradient is X^T (Xw - y) / n: the usual least squares."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.mean((pred.reshape(target.shape) - target) ** 2)


@dataclass(frozen=True)
class LocalSGD:
    """The local optimizer's settings; batch_size 0 means full-batch gradients."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 32


class LocalWorker:
    """Worker i: its model x_i, momentum buffers, CoCoD snapshot and pending gradient."""

    def __init__(
        self,
        model: nn.Module,
        data: ArrayDataset,
        sgd: LocalSGD,
        device: torch.device,
        *,
        lr_at: Callable[[int], float] | None = None,
        augment: Augmentation | None = None,
    ) -> None:
        # The shard lives on the device for good; batches are drawn by index, no DataLoader.
        self.device = device
        self.data = ArrayDataset(x=data.x.to(device), y=data.y.to(device))
        self.model = model.to(device=device, dtype=data.x.dtype)
        self.sgd = sgd
        self.lr_at = lr_at or (lambda _: sgd.lr)
        self.augment = augment
        #: local steps applied so far; the next one is step `steps_done + 1` of the schedule
        self.steps_done = 0
        self.loss_fn = loss_function(data)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=sgd.lr, momentum=sgd.momentum, nesterov=sgd.nesterov
        )
        self.snapshot: torch.Tensor | None = None
        self.pending: list[torch.Tensor] | None = None

    def vector(self) -> torch.Tensor:
        """x_i as a flat tensor (a copy)."""
        return model_vector(self.model)

    def load_vector(self, vec: torch.Tensor) -> None:
        """Overwrite x_i from a flat tensor of the same layout."""
        load_model_vector(self.model, vec)

    # -- optimizer state as vectors, for Flower's context.state ------------------------
    def momentum_vector(self) -> torch.Tensor | None:
        """All momentum buffers, flat (zeros where none exists yet); None without momentum."""
        if not self.sgd.momentum:
            return None
        bufs = []
        for p in self.model.parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            bufs.append((buf if buf is not None else torch.zeros_like(p)).reshape(-1))
        return torch.cat(bufs)

    def load_momentum(self, vec: torch.Tensor) -> None:
        """Restore momentum buffers saved by `momentum_vector` (zero buffers are equivalent
        to fresh ones because torch's SGD uses no dampening)."""
        offset = 0
        for p in self.model.parameters():
            buf = vec[offset : offset + p.numel()].view_as(p).to(self.device).clone()
            self.optimizer.state[p]["momentum_buffer"] = buf
            offset += p.numel()

    def pending_vector(self) -> torch.Tensor | None:
        """The gradient held back for the next sync (Remark 1), flat."""
        if self.pending is None:
            return None
        return torch.cat([g.reshape(-1) for g in self.pending])

    def load_pending(self, vec: torch.Tensor) -> None:
        """Restore a gradient saved by `pending_vector`."""
        out, offset = [], 0
        for p in self.model.parameters():
            out.append(vec[offset : offset + p.numel()].view_as(p).to(self.device).clone())
            offset += p.numel()
        self.pending = out

    # -- the rules -----------------------------------------------------------------------
    def apply_sync(
        self,
        self_weight: float,
        mix: torch.Tensor | None,
        client_rule: ClientRule,
        update_rule: UpdateRule,
    ) -> None:
        """Apply this worker's part of a sync, then any step held back for it."""
        x = self.vector()
        if client_rule is ClientRule.CORRECTION:
            if mix is None or self.snapshot is None:
                raise ValueError("CoCoD-SGD correction needs the stale average and a snapshot")
            x = mix.to(self.device) + x - self.snapshot
            self.snapshot = x.clone()
        else:
            x = self_weight * x + mix.to(self.device) if mix is not None else self_weight * x
        self.load_vector(x)
        if update_rule is UpdateRule.MIX_BEFORE_STEP:
            if self.pending is None:
                raise ValueError("a mix-before-step sync needs the gradient of the last step")
            for p, g in zip(self.model.parameters(), self.pending, strict=True):
                p.grad = g
            self._step()
            self.pending = None

    def adopt(self, x: torch.Tensor, *, reset: bool) -> None:
        """Take `x` as this worker's model after a sync it missed: what it held back for
        that sync (a pending gradient, a CoCoD snapshot) no longer applies; `reset` (its
        last update was rejected) also clears the momentum buffers it was made with."""
        self.load_vector(x)
        self.pending = None
        self.snapshot = self.vector()
        if reset:
            for state in self.optimizer.state.values():
                state.pop("momentum_buffer", None)

    def run(self, steps: int, update_rule: UpdateRule, generator: torch.Generator) -> float:
        """The local steps of one round; the mean training loss over them.

        Under Remark 1 the last step's gradient is only computed here and applied after the
        next sync, so the reported model is the one it was taken at.
        """
        losses = []
        batches = self._batches(steps, generator)
        for k, idx in enumerate(batches):
            losses.append(self._gradient(idx, generator))
            if update_rule is UpdateRule.MIX_BEFORE_STEP and k == steps - 1:
                self.pending = [p.grad.detach().clone() for p in self.model.parameters()]
            else:
                self._step()
        return float(sum(losses) / len(losses)) if losses else float("nan")

    def _step(self) -> None:
        """One optimizer step at the schedule's learning rate for this step."""
        lr = self.lr_at(self.steps_done + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.steps_done += 1

    def _gradient(self, idx: torch.Tensor | None, generator: torch.Generator) -> float:
        """Fill p.grad with the mini-batch gradient plus weight decay; return the loss."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=False)
        x = self.data.x if idx is None else self.data.x[idx]
        y = self.data.y if idx is None else self.data.y[idx]
        if self.augment is not None:
            x = self.augment(x, generator)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        if self.sgd.weight_decay:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.grad.add_(p, alpha=self.sgd.weight_decay)
        return float(loss.detach())

    def _batches(self, steps: int, generator: torch.Generator) -> list[torch.Tensor | None]:
        """Mini-batch indices for `steps` steps: consecutive slices of seeded permutations."""
        n, size = len(self.data), self.sgd.batch_size
        if size == 0 or size >= n:
            return [None] * steps
        out: list[torch.Tensor | None] = []
        perm = torch.randperm(n, generator=generator)
        pos = 0
        for _ in range(steps):
            if pos + size > n:
                perm, pos = torch.randperm(n, generator=generator), 0
            out.append(perm[pos : pos + size].to(self.device))
            pos += size
        return out


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` on `data`; accuracy is NaN for regression."""
    model.eval()
    device = next(model.parameters()).device
    loss_fn = loss_function(data)
    total_loss, correct, n = 0.0, 0, len(data)
    for start in range(0, n, batch_size):
        x = data.x[start : start + batch_size].to(device, dtype=next(model.parameters()).dtype)
        y = data.y[start : start + batch_size].to(device)
        out = model(x)
        total_loss += float(loss_fn(out, y)) * len(y)
        if not y.is_floating_point():
            correct += int((out.argmax(dim=1) == y).sum())
    accuracy = correct / n if not data.y.is_floating_point() else float("nan")
    return total_loss / n, accuracy
