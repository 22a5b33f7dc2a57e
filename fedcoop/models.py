"""Models small enough to train many simulated clients on a CPU, looked up by name from configs."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from fedcoop.data import ArrayDataset
from fedcoop.errors import ConfigError


def _check_positive(**values: int) -> None:
    """Refuse zero or negative layer sizes with a ConfigError instead of a torch shape error."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(name, value, "must be a positive integer")


class SmallCNN(nn.Module):
    """Two 5x5 conv + max-pool blocks and two dense layers, for 1 x 28 x 28 images (MNIST).

    The defaults are a lighter version of the classic MNIST CNN (channels 32, 64 and hidden 512,
    582,026 parameters): channels 16, 32 and hidden 128 (80,202 parameters) cut a training step
    (forward, backward, SGD) on a batch of 32 from 10-26 ms to about 5 ms on 2 CPU cores, which
    matters when one CPU simulates 16 clients. ``channels=(32, 64), hidden=512`` gives the classic.
    """

    def __init__(
        self, num_classes: int = 10, channels: tuple[int, int] = (16, 32), hidden: int = 128
    ) -> None:
        super().__init__()
        if not isinstance(channels, tuple | list) or len(channels) != 2:
            raise ConfigError("channels", channels, "must be two positive integers")
        _check_positive(
            num_classes=num_classes, channels_1=channels[0], channels_2=channels[1], hidden=hidden
        )
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, first, kernel_size=5),  # 28 -> 24
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 12
            nn.Conv2d(first, second, kernel_size=5),  # -> 8
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N x num_classes) for images N x 1 x 28 x 28."""
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """The "2NN" of FedAvg (McMahan et al., 2017): two ReLU hidden layers, 199,210 parameters.

    Input is flattened, so it takes N x 1 x 28 x 28 images or N x in_features rows alike.
    """

    def __init__(self, in_features: int = 784, hidden: int = 200, num_classes: int = 10) -> None:
        super().__init__()
        _check_positive(in_features=in_features, hidden=hidden, num_classes=num_classes)
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N x num_classes)."""
        return self.layers(x)


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one Linear over the flattened input (a convex baseline)."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        _check_positive(in_features=in_features, num_classes=num_classes)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N x num_classes); pair with cross-entropy, which applies the softmax."""
        return self.linear(x.flatten(1))


class LinearRegression(nn.Module):
    """y = <w, x> with no bias, so least-squares tests can compare w with a closed-form optimum."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        _check_positive(in_features=in_features)
        self.linear = nn.Linear(in_features, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions of shape (N,), not (N, 1), so MSE against (N,) targets cannot broadcast."""
        return self.linear(x.flatten(1)).squeeze(-1)


_MODELS: dict[str, type[nn.Module]] = {
    "cnn": SmallCNN,
    "mlp": MLP,
    "logreg": LogisticRegression,
    "linear": LinearRegression,
}
MODELS = tuple(_MODELS)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """The model registered as ``name``, built with ``kwargs`` (checked against its signature)."""
    if name not in _MODELS:
        raise ConfigError("model", name, f"must be one of {', '.join(MODELS)}")
    cls = _MODELS[name]
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{name} model arguments", kwargs, f"must fit {cls.__name__}{signature} ({exc})"
        ) from exc
    return cls(**kwargs)


def build_for(name: str, dataset: ArrayDataset) -> nn.Module:
    """Model ``name`` sized for ``dataset``: its input features and number of classes."""
    features = int(np.prod(dataset.x.shape[1:]))
    if name == "linear":
        return build_model(name, in_features=features)
    if name == "cnn":
        if tuple(dataset.x.shape[1:]) != (1, 28, 28):
            raise ConfigError("model", name, "cnn takes 1 x 28 x 28 images; use mlp or logreg")
        return build_model(name, num_classes=dataset.num_classes)
    if dataset.num_classes == 0:
        raise ConfigError("model", name, "regression targets need model = linear")
    return build_model(name, in_features=features, num_classes=dataset.num_classes)
