"""Training-time data augmentation on whole batches of tensors, on whatever device holds them.

CIFAR training uses the standard augmentation: a random 32 x 32 crop of the image padded by 4
pixels on each side, and a random horizontal flip, drawn independently for every sample.
It is written by hand because torchvision.transforms.v2 draws one crop and one flip per call
and applies them to the whole batch, which is a different (much weaker) augmentation; looping
over samples in Python instead would be slow, above all on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fedcoop.data import DATASETS
from fedcoop.errors import ConfigError

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """A random crop of each zero-padded image and a random horizontal flip, per sample.

    ``x`` is N x C x H x W on any device; the result has the same shape, dtype and device.
    Each sample's offsets (0..2*padding in each direction) and flip (probability 1/2) are drawn
    from ``generator``, a CPU generator, and then moved to x's device, so a seeded generator
    gives the same augmentation on every device. The padding is zeros of x itself: on
    normalised data that is the mean colour rather than black, as is usual on GPU pipelines.
    """
    if x.ndim != 4:
        raise ConfigError("x", tuple(x.shape), "must be a batch of images N x C x H x W")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError("padding", padding, "must be an integer >= 0")
    if generator.device.type != "cpu":
        raise ConfigError("generator", str(generator.device), "must be a CPU torch.Generator")
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # N x H
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = offsets[1, :, None] + torch.where(flips[:, None], w - 1 - cols, cols)  # N x W
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    # One gather over each image's flattened padded planes picks every sample's window at once.
    wp = w + 2 * padding
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w)
    out = padded.reshape(n, c, (h + 2 * padding) * wp).gather(2, index.expand(n, c, h * w))
    return out.reshape(n, c, h, w)


# Data set name -> augmentation applied to each training batch; absent names get none.
TRAIN_AUGMENTATION: dict[str, Augmentation] = {
    "cifar10": random_crop_flip,
    "cifar100": random_crop_flip,
}


def augmentation_for(name: str) -> Augmentation | None:
    """The training augmentation of data set ``name``, or None when it trains on plain data."""
    if name not in DATASETS:
        raise ConfigError("dataset", name, f"must be one of {', '.join(DATASETS)}")
    return TRAIN_AUGMENTATION.get(name)
