"""A model as the flat vector the rules mix, and what reads a model: its loss, its
evaluation, the device it runs on.

A worker's model is handled as one flat vector (every floating-point entry of its
state_dict, in order), because that is what the mixing rules act on: x_i <- w_ii x_i + mix.
The local rule over such vectors is `fedcoop.local_rule`; its settings `fedcoop.optimizers`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fedcoop.data import ArrayDataset
from fedcoop.errors import ConfigError


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


#: The environment variable that picks the device workers and the server's evaluation run on
#: (a torch device string: "cpu", "cuda", "cuda:1"), e.g. the CPU on a machine with a GPU.
DEVICE_VARIABLE = "FEDCOOP_DEVICE"


def default_device() -> torch.device:
    """`FEDCOOP_DEVICE` when it is set, else CUDA when there is a GPU, else the CPU."""
    name = os.environ.get(DEVICE_VARIABLE, "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            DEVICE_VARIABLE, name, "a torch device: cpu, cuda or cuda:<index>"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(DEVICE_VARIABLE, name, "cpu: this machine has no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(DEVICE_VARIABLE, name, "cpu, cuda or cuda:<index>")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(DEVICE_VARIABLE, name, f"cuda:0 to cuda:{count - 1} on this machine")
    return device


def loss_function(dataset: ArrayDataset) -> nn.Module:
    """Cross-entropy for class labels; half mean squared error for real targets."""
    if dataset.y.is_floating_point():
        return _HalfMSE()
    return nn.CrossEntropyLoss()


class _HalfMSE(nn.Module):
    """(1/2n) ||Xw - y||^2, whose gradient is X^T (Xw - y) / n: the usual least squares."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.mean((pred.reshape(target.shape) - target) ** 2)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` on `data`; accuracy is NaN for regression. Batches
    of 256: the CNN's activations for 1,000 images at once took 260 MB, as fast per image."""
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
