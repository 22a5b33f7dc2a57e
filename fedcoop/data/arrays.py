"""ArrayDataset, the in-memory form every data set is returned in.

Its own module because every loader builds one (the generated, embedded and on-disk sets) and
``datasets`` imports those loaders: beside ``load_dataset`` it would make an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedcoop.errors import ConfigError


@dataclass(frozen=True)
class ArrayDataset:
    """Whole data set held as two tensors, so clients slice partitions without a DataLoader copy.

    ``x`` is float (N x C x H x W images, already normalised, or N x d features); ``y`` holds
    int64 class labels 0..C-1, or float targets for regression. ``group``, when present, is an
    int64 id per row of the unit that produced it (a device of the Synthetic benchmark), from
    which a natural partition (one group per client) is built. Named so as not to clash
    with ``torch.utils.data.TensorDataset``.
    """

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(
                "y", tuple(self.y.shape), f"must have as many rows as x ({self.x.shape[0]})"
            )
        if self.group is not None and (
            self.group.shape != (self.x.shape[0],) or self.group.dtype != torch.int64
        ):
            raise ConfigError(
                "group",
                (tuple(self.group.shape), str(self.group.dtype)),
                f"must be None or an int64 vector with one entry per row of x ({self.x.shape[0]})",
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One (image, label) pair, so the data set plugs into ``torch.utils.data.DataLoader``."""
        return self.x[index], self.y[index]

    @property
    def num_classes(self) -> int:
        """Number of classes, taken as largest label + 1 because labels are 0..C-1 (0 for
        regression targets)."""
        if not len(self) or self.y.is_floating_point():
            return 0
        return int(self.y.max()) + 1

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The rows at ``indices`` (``group`` too), e.g. one client's partition from
        ``fedcoop.partitions``."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        group = None if self.group is None else self.group[index]
        return ArrayDataset(self.x[index], self.y[index], group)
