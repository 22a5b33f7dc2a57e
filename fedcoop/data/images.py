"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 decoded from a folder ``files.locate`` found.

Our own readers (``formats``), not torchvision's classes: those check the md5 of the full
published files and would refuse the small files that tests write in the same format, and they
insist on their own folder layout while the Debian and npm copies live elsewhere.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from fedcoop.data.arrays import ArrayDataset
from fedcoop.data.files import IMAGE_SETS, MNIST_FILES
from fedcoop.data.formats import read_cifar_batch, read_idx
from fedcoop.errors import ConfigError

_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def _read_mnist_like(directory: Path, title: str) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) of MNIST-format IDX files."""
    arrays = [
        read_idx(directory / f) if (directory / f).is_file() else read_idx(directory / f"{f}.gz")
        for f in MNIST_FILES
    ]
    for images, labels, part in ((*arrays[:2], "train"), (*arrays[2:], "t10k")):
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ConfigError(
                f"{title} {part} images",
                f"{directory} shape {images.shape} dtype {images.dtype}",
                "must be uint8 N x 28 x 28",
            )
        if labels.shape != images.shape[:1]:
            raise ConfigError(
                f"{title} {part} labels",
                f"{directory} shape {labels.shape}",
                f"must be one label per image ({images.shape[0]})",
            )
    return arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3]


def _read_cifar(directory: Path, name: str) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) of unpacked CIFAR batches."""
    key = "labels" if name == "cifar10" else "fine_labels"
    *train_files, test_file = IMAGE_SETS[name].files
    train = [read_cifar_batch(directory / f, key) for f in train_files]
    test_images, test_labels = read_cifar_batch(directory / test_file, key)
    return (
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
    )


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 N x C x H x W images scaled to [0, 1].

    Counted from each channel's histogram, so no float copy of the whole set is made.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        mean = counts @ values / counts.sum()
        means.append(mean)
        stds.append(math.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    std = np.asarray(stds)
    return np.asarray(means), np.where(std > 0, std, 1.0)


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """float32 (images / 255 - mean) / std, per channel."""
    shape = (1, -1, 1, 1)
    x = torch.from_numpy(images).float().div_(255.0)
    return x.sub_(torch.from_numpy(mean).float().view(shape)).div_(
        torch.from_numpy(std).float().view(shape)
    )


@functools.lru_cache(maxsize=4)
def decoded_images(name: str, directory: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """The official (train, test) split of ``name`` read from ``directory``, once per process.

    Both parts are normalised with the per-channel mean and std of the training part.
    """
    title = IMAGE_SETS[name].title
    if name.startswith("cifar"):
        train_x, train_y, test_x, test_y = _read_cifar(directory, name)
    else:
        train_x, train_y, test_x, test_y = _read_mnist_like(directory, title)
    for labels, part in ((train_y, "train"), (test_y, "test")):
        if not labels.size:
            raise ConfigError(
                f"{title} {part} part", str(directory), "must hold at least one image"
            )
        if not 0 <= labels.min() <= labels.max() < _NUM_CLASSES[name]:
            raise ConfigError(
                f"{title} {part} labels",
                f"{directory} range {labels.min()}..{labels.max()}",
                f"must lie in 0..{_NUM_CLASSES[name] - 1}",
            )
    mean, std = _channel_stats(train_x)
    return (
        ArrayDataset(_normalise(train_x, mean, std), torch.from_numpy(train_y.astype(np.int64))),
        ArrayDataset(_normalise(test_x, mean, std), torch.from_numpy(test_y.astype(np.int64))),
    )
