"""Models looked up by name from configs: small ones for CPU simulation, and the papers' CNNs.

"cnn", "mlp", "logreg" and "linear" are small enough to train many simulated clients on a CPU;
"resnet18" (Overlap-Local-SGD's CIFAR-10 model) and "vgg16" (Cooperative SGD's, Figure 3) are
torchvision's networks adapted to 32 x 32 (or 28 x 28) inputs. "resnet8" and "resnet20" (He et
al.'s CIFAR ResNets, 75k and 270k parameters) and "bn-mlp" (the 2NN with BatchNorm) are the
BatchNorm models a CPU can train many of: the mechanism of the overlap paper's non-IID claims
is BatchNorm on skewed batches, which the models without it cannot show.

All of those carry BatchNorm. Their running statistics (``running_mean``,
``running_var``) are floating-point entries of ``state_dict()``, so the code that mixes "every
floating-point state entry" (``fedcoop.model_vectors.model_vector``) averages them along with the
weights, as FedAvg does; ``num_batches_tracked`` is int64 and is left out, which is harmless
because it only matters for BatchNorm with ``momentum=None``. Nothing special is needed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

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


class BatchNormMLP(MLP):
    """The 2NN with BatchNorm after each hidden Linear (199,210 + 4 x 200 parameters): the
    smallest model whose batches are normalised by their own statistics."""

    def __init__(self, in_features: int = 784, hidden: int = 200, num_classes: int = 10) -> None:
        super().__init__(in_features, hidden, num_classes)
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class _ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers and the parameter-free shortcut of He et al.'s CIFAR networks
    (their option A: the input subsampled and zero-padded to the new channel count)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride, self.pad = stride, channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            half = self.pad // 2
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, half, self.pad - half))
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al., 2016, section 4.2): a 3x3 conv of 16 channels, three
    stages of n residual blocks at 16, 32 and 64 channels (the last two halving the
    resolution), global average pooling and one Linear. ResNet-20 (n = 3) has 269,722
    parameters with 3 input channels and 10 classes; ResNet-8 (n = 1) 75,290. The pooling is
    adaptive, so 28 x 28 images (Fashion-MNIST, ``in_channels=1``) go through as 32 x 32 do."""

    def __init__(self, blocks: int = 3, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        _check_positive(blocks=blocks, num_classes=num_classes, in_channels=in_channels)
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        previous = 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage and not block else 1
                layers.append(_ResidualBlock(previous, channels, stride))
                previous = channels
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N x num_classes) for images N x C x H x W."""
        return self.head(self.stages(torch.relu(self.bn(self.conv(x)))))


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


# Configuration "D" of Simonyan & Zisserman (2015): 13 3x3 convs, "M" a 2x2 max-pool. The same
# list as torchvision.models.vgg.cfgs["D"], whose make_layers cannot take in_channels.
VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16(nn.Module):
    """VGG-16 with BatchNorm for CIFAR (Cooperative SGD's Figure 3 model), 14,728,266 parameters.

    The 13 conv layers of configuration D, each followed by BatchNorm and ReLU, then an
    adaptive average pool to 1 x 1 and a classifier on the 512 features: one Linear by default
    (the common CIFAR VGG, e.g. kuangliu/pytorch-cifar's), or 512-hidden-num_classes
    with ``hidden``. The max-pools round up (``ceil_mode``), so 28 x 28 inputs shrink to
    14, 7, 4, 2, 1 instead of reaching 0 at the fifth pool; for 32 x 32 inputs this changes
    nothing (16, 8, 4, 2, 1). Initialised as torchvision initialises its VGG.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, hidden: int | None = None
    ) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes, in_channels=in_channels)
        if hidden is not None:
            _check_positive(hidden=hidden)
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(channels, int(spec), kernel_size=3, padding=1),
                    nn.BatchNorm2d(int(spec)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Flatten()]
        if hidden is None:
            head.append(nn.Linear(channels, num_classes))
        else:
            head += [
                nn.Linear(channels, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            ]
        self.classifier = nn.Sequential(*head)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N x num_classes) for images N x in_channels x H x W."""
        return self.classifier(self.avgpool(self.features(x)))


@functools.cache
def _resnet18() -> type[nn.Module]:
    """ResNet18, defined on first use: it is the one model built on torchvision, whose import
    (with the torch._dynamo it pulls in) costs about 170 MB and a second, so a device training
    any other model never imports it. `fedcoop.models.ResNet18` is this class."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class ResNet18(ResNet):
        """ResNet-18 (He et al., 2016) in its CIFAR form: torchvision's network with a 3x3 stem.

        torchvision's ImageNet stem (a 7x7 stride-2 conv, then a stride-2 max-pool) divides the
        resolution by 4 before the first residual block, so a 32 x 32 image reaches it as 8 x 8 and
        the last stage as 1 x 1. The usual CIFAR ResNet-18 uses a 3x3 stride-1 conv with 64
        channels and no max-pool instead, so the four stages see 32, 16, 8 and 4 pixels. Here
        ``conv1`` is that conv and ``maxpool`` is ``nn.Identity``; the rest (BasicBlocks
        [2, 2, 2, 2], adaptive average pool, one Linear) is torchvision's. With 10 classes and 3
        input channels it has 11,173,962 parameters. ``in_channels=1`` takes 1 x 28 x 28 images.
        """

        def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
            _check_positive(num_classes=num_classes, in_channels=in_channels)
            super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            # The same initialisation torchvision gives every other conv of the network.
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()

    return ResNet18


def __getattr__(name: str) -> object:
    if name == "ResNet18":
        return _resnet18()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: each model's class, or a function that defines it on first use
_MODELS: dict[str, Callable[[], Callable[..., nn.Module]]] = {
    "cnn": lambda: SmallCNN,
    "mlp": lambda: MLP,
    "logreg": lambda: LogisticRegression,
    "linear": lambda: LinearRegression,
    "resnet18": _resnet18,
    "vgg16": lambda: VGG16,
    "resnet8": lambda: functools.partial(CifarResNet, 1),
    "resnet20": lambda: functools.partial(CifarResNet, 3),
    "bn-mlp": lambda: BatchNormMLP,
}
MODELS = tuple(_MODELS)
# Models that take N x C x H x W images (any C, H, W) and are sized by C.
_IMAGE_MODELS = ("resnet18", "vgg16", "resnet8", "resnet20")
# Models that flatten their input and are sized by its number of features.
_FLAT_MODELS = ("mlp", "logreg", "bn-mlp")


def build_model(name: str, **kwargs: object) -> nn.Module:
    """The model registered as ``name``, built with ``kwargs`` (checked against its signature)."""
    if name not in _MODELS:
        raise ConfigError("model", name, f"must be one of {', '.join(MODELS)}")
    cls = _MODELS[name]()
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{name} model arguments", kwargs, f"must fit {cls.__name__}{signature} ({exc})"
        ) from exc
    return cls(**kwargs)


def build_for(name: str, dataset: ArrayDataset, *, num_classes: int | None = None) -> nn.Module:
    """Model ``name`` sized for ``dataset``, or a ConfigError if the two cannot go together.

    Image models ("resnet18", "vgg16") take N x C x H x W data and get ``in_channels=C``;
    "cnn" takes only N x 1 x 28 x 28; "mlp" and "logreg" take any shape (flattened, so flat
    N x d data sets such as FedProx's Synthetic go only with them or "linear") and get
    ``in_features``; "linear" alone takes regression (float) targets, and only those.
    ``num_classes`` defaults to the data set's (largest label + 1); pass the global count when
    ``dataset`` is one client's shard, which may lack the largest labels.
    """
    if name not in _MODELS:
        raise ConfigError("model", name, f"must be one of {', '.join(MODELS)}")
    shape = tuple(dataset.x.shape[1:])
    features = int(np.prod(shape))
    regression = dataset.y.is_floating_point()
    if name == "linear":
        if not regression:
            raise ConfigError(
                "model",
                name,
                "linear regression needs float targets but the data set has class labels; "
                f"use one of {', '.join(('cnn', *_FLAT_MODELS, *_IMAGE_MODELS))}",
            )
        return build_model(name, in_features=features)
    if regression:
        raise ConfigError("model", name, "regression (float) targets need model = linear")
    if num_classes is None:
        num_classes = dataset.num_classes
    elif num_classes < dataset.num_classes:
        raise ConfigError(
            "num_classes",
            num_classes,
            f"must be at least the data set's {dataset.num_classes} (largest label + 1)",
        )
    if name == "cnn":
        if shape != (1, 28, 28):
            raise ConfigError(
                "model",
                name,
                f"cnn takes 1 x 28 x 28 images but the data set has rows of shape {shape}; "
                f"use one of {', '.join(_FLAT_MODELS + _IMAGE_MODELS)}",
            )
        return build_model(name, num_classes=num_classes)
    if name in _IMAGE_MODELS:
        if len(shape) != 3:
            raise ConfigError(
                "model",
                name,
                f"{name} takes C x H x W images but the data set has rows of shape {shape}; "
                f"use one of {', '.join(_FLAT_MODELS)}",
            )
        return build_model(name, num_classes=num_classes, in_channels=shape[0])
    return build_model(name, in_features=features, num_classes=num_classes)
