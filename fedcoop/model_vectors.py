"""A model as the flat vector the rules mix, and what reads a model: its loss, its
evaluation, the device it runs on.

A worker's model is handled as one flat vector (every floating-point entry of its
state_dict, in order), because that is what the mixing rules act on: x_i <- w_ii x_i + mix.
The local rule over such vectors is `fedcoop.local_rule`; its settings `fedcoop.optimizers`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedcoop.data import ArrayDataset
from fedcoop.errors import ConfigError


def _entries(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def model_vector(model: nn.Module) -> torch.Tensor:
    """Every floating-point entry of the model's state, flat: the x that the rules mix."""
    return torch.cat([t.detach().reshape(-1) for t in _entries(model)])


#: the name and shape of each entry of a model vector, in its order
Layout = tuple[tuple[str, tuple[int, ...]], ...]


def layout(model: nn.Module) -> Layout:
    """How `model_vector` lays the model's state out: its floating-point entries' names and
    shapes. Flower's stock strategies exchange those entries as an ArrayRecord of named
    arrays, fedcoop's own rules the flat vector."""
    return tuple(
        (k, tuple(t.shape)) for k, t in model.state_dict().items() if t.is_floating_point()
    )


def split_vector(vector: np.ndarray, entries: Layout) -> dict[str, np.ndarray]:
    """A flat vector as named arrays of `entries`' shapes (views of the vector)."""
    out, offset = {}, 0
    for name, shape in entries:
        size = int(np.prod(shape))
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    if offset != vector.size:
        raise ValueError(f"a vector of {vector.size} entries for a model of {offset}")
    return out


def join_arrays(arrays: Mapping[str, np.ndarray], entries: Layout) -> np.ndarray:
    """Named arrays as the flat vector; ValueError naming the first array that is missing,
    unknown or mis-shaped (a forged or foreign message)."""
    unknown = sorted(set(arrays) - {name for name, _ in entries})
    if unknown:
        raise ValueError(f"arrays {unknown} are not entries of the model")
    for name, shape in entries:
        if name not in arrays:
            raise ValueError(f"no array {name!r} (the model's entries: {[n for n, _ in entries]})")
        if tuple(arrays[name].shape) != shape:
            raise ValueError(f"array {name!r} has shape {arrays[name].shape}, the model {shape}")
    return np.concatenate([np.asarray(arrays[name]).reshape(-1) for name, _ in entries])


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
