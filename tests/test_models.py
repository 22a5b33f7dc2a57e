"""Model shapes, sizes, the name registry, and that each model can actually learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.vgg import cfgs

from fedcoop.config import RunConfig
from fedcoop.data import ArrayDataset
from fedcoop.errors import ConfigError
from fedcoop.model_vectors import model_vector
from fedcoop.models import (
    MLP,
    MODELS,
    VGG16,
    VGG16_LAYERS,
    BatchNormMLP,
    CifarResNet,
    LinearRegression,
    LogisticRegression,
    ResNet18,
    SmallCNN,
    build_for,
    build_model,
)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names() -> None:
    names = ("cnn", "mlp", "logreg", "linear", "resnet18", "vgg16", "resnet8", "resnet20")
    assert (*names, "bn-mlp") == MODELS
    assert isinstance(build_model("cnn"), SmallCNN)
    assert isinstance(build_model("mlp"), MLP)
    assert isinstance(build_model("logreg"), LogisticRegression)
    assert isinstance(build_model("linear", in_features=3), LinearRegression)
    assert isinstance(build_model("resnet18"), ResNet18)
    assert isinstance(build_model("vgg16"), VGG16)
    assert isinstance(build_model("resnet20"), CifarResNet)
    assert isinstance(build_model("bn-mlp"), BatchNormMLP)


@pytest.mark.parametrize(
    ("name", "kwargs", "params"),
    [
        ("cnn", {}, 80_202),
        ("cnn", {"channels": (32, 64), "hidden": 512}, 582_026),  # the classic MNIST CNN
        ("mlp", {}, 199_210),  # FedAvg's 2NN
        ("logreg", {}, 7_850),
        ("mlp", {"hidden": 10, "num_classes": 3}, 784 * 10 + 10 + 10 * 10 + 10 + 10 * 3 + 3),
    ],
)
def test_classifier_shapes_and_sizes(name: str, kwargs: dict[str, object], params: int) -> None:
    model = build_model(name, **kwargs)
    assert _num_params(model) == params
    num_classes = kwargs.get("num_classes", 10)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, num_classes)


def test_flat_inputs_and_linear_regression_shapes() -> None:
    assert build_model("mlp")(torch.zeros(2, 784)).shape == (2, 10)
    assert LogisticRegression(4, 3)(torch.zeros(6, 4)).shape == (6, 3)
    linear = LinearRegression(3)
    assert _num_params(linear) == 3 and linear.linear.bias is None
    assert linear(torch.zeros(7, 3)).shape == (7,)


def test_linear_regression_computes_inner_product() -> None:
    model = LinearRegression(3)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    out = model(torch.tensor([[1.0, 1.0, 2.0], [0.0, 3.0, 4.0]]))
    assert out.tolist() == [0.0, -4.0]


@pytest.mark.parametrize("name", ["cnn", "mlp", "logreg"])
def test_classifiers_fit_a_small_batch(name: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    model = build_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="resnet18, vgg16, resnet8, resnet20, bn-mlp") as info:
        build_model("resnet")
    assert info.value.parameter == "model"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("linear", {}),
        ("cnn", {"width": 3}),
        ("logreg", {"in_features": 4, "bias": False}),
        ("resnet18", {"in_features": 3}),
        ("vgg16", {"dropout": 0.5}),
    ],
)
def test_bad_model_arguments_are_refused(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=f"{name} model arguments"):
        build_model(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "parameter"),
    [
        ("mlp", {"hidden": 0}, "hidden"),
        ("logreg", {"num_classes": -1}, "num_classes"),
        ("linear", {"in_features": 2.5}, "in_features"),
        ("cnn", {"channels": (8,)}, "channels"),
        ("cnn", {"channels": (8, 0)}, "channels_2"),
        ("resnet18", {"in_channels": 0}, "in_channels"),
        ("resnet18", {"num_classes": 0}, "num_classes"),
        ("vgg16", {"hidden": 0}, "hidden"),
        ("vgg16", {"in_channels": 2.0}, "in_channels"),
    ],
)
def test_bad_layer_sizes_are_refused(name: str, kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name, **kwargs)
    assert info.value.parameter == parameter


# -- the papers' CIFAR networks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "params"),
    [
        ("resnet18", {}, 11_173_962),  # the CIFAR ResNet-18 of Overlap-Local-SGD
        ("resnet18", {"in_channels": 1}, 11_173_962 - 2 * 9 * 64),
        ("resnet18", {"num_classes": 100}, 11_173_962 + 90 * 513),
        ("vgg16", {}, 14_728_266),  # VGG-16 with BatchNorm and one Linear on 512 features
        ("vgg16", {"in_channels": 1}, 14_728_266 - 2 * 9 * 64),
        ("vgg16", {"hidden": 512}, 14_728_266 - 5_130 + 512 * 513 + 513 * 10),
        # He et al.'s CIFAR ResNets (option A shortcuts carry no parameters): 0.27M for 20
        ("resnet20", {}, 269_722),
        ("resnet8", {}, 75_290),
        ("resnet20", {"in_channels": 1}, 269_722 - 2 * 9 * 16),
        ("bn-mlp", {}, 199_210 + 2 * 2 * 200),
    ],
)
def test_cifar_model_sizes(name: str, kwargs: dict[str, object], params: int) -> None:
    assert _num_params(build_model(name, **kwargs)) == params


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "resnet8", "resnet20"])
@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 28)])
def test_cifar_models_take_32_and_28_pixel_images(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=7)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_resnet18_has_the_cifar_stem() -> None:
    model = build_model("resnet18", in_channels=1)
    assert isinstance(model, ResNet)  # torchvision's network, only the stem changed
    conv = model.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert conv.in_channels == 1 and conv.out_channels == 64 and conv.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # The stem keeps the resolution: the first block sees 32 x 32 (ImageNet's stem gives 8 x 8).
    model = build_model("resnet18")
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    assert stem(torch.zeros(2, 3, 32, 32)).shape == (2, 64, 32, 32)


def test_vgg16_is_configuration_d_with_batchnorm() -> None:
    assert list(VGG16_LAYERS) == cfgs["D"]
    model = build_model("vgg16")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [v for v in cfgs["D"] if v != "M"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [10]


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_batchnorm_running_stats_are_in_the_mixed_vector(name: str) -> None:
    model = build_model(name)
    state = model.state_dict()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    running = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(running) == 2 * len(norms)
    assert all(state[k].is_floating_point() for k in running)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == len(norms) and all(state[k].dtype == torch.int64 for k in counters)
    stats = sum(2 * m.num_features for m in norms)
    assert model_vector(model).numel() == _num_params(model) + stats


# -- build_for: sizing from the data set, and impossible pairs -----------------------------------


def _data(shape: tuple[int, ...], labels: list[int] | None = None) -> ArrayDataset:
    y = torch.tensor(labels) if labels is not None else torch.zeros(shape[0])
    return ArrayDataset(torch.zeros(shape), y)


CIFAR = _data((4, 3, 32, 32), [0, 9, 3, 1])
MNIST = _data((4, 1, 28, 28), [0, 9, 3, 1])
SYNTHETIC = _data((4, 60), [0, 9, 3, 1])  # FedProx's Synthetic: 60 features, 10 classes
REGRESSION = _data((4, 10))


@pytest.mark.parametrize(
    ("name", "dataset", "channels"),
    [("resnet18", CIFAR, 3), ("resnet18", MNIST, 1), ("vgg16", CIFAR, 3), ("vgg16", MNIST, 1)],
)
def test_build_for_sizes_image_models(name: str, dataset: ArrayDataset, channels: int) -> None:
    model = build_for(name, dataset)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert first.in_channels == channels and last.out_features == 10
    assert model(dataset.x[:2]).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "dataset", "features"),
    [
        ("mlp", SYNTHETIC, 60),
        ("logreg", SYNTHETIC, 60),
        ("mlp", CIFAR, 3072),
        ("logreg", MNIST, 784),
    ],
)
def test_build_for_sizes_flat_models(name: str, dataset: ArrayDataset, features: int) -> None:
    model = build_for(name, dataset)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == features and linears[-1].out_features == 10
    assert model(dataset.x[:2]).shape == (2, 10)


def test_build_for_cnn_and_linear() -> None:
    assert build_for("cnn", MNIST)(MNIST.x[:2]).shape == (2, 10)
    model = build_for("linear", REGRESSION)
    assert isinstance(model, LinearRegression) and model(REGRESSION.x[:2]).shape == (2,)


def test_build_for_takes_the_global_number_of_classes() -> None:
    shard = _data((4, 60), [0, 1, 3, 1])  # a client's shard that lacks classes 4..9
    assert build_for("logreg", shard).linear.out_features == 4
    assert build_for("logreg", shard, num_classes=10).linear.out_features == 10
    with pytest.raises(ConfigError) as info:
        build_for("logreg", shard, num_classes=3)
    assert info.value.parameter == "num_classes" and "4" in info.value.valid


@pytest.mark.parametrize(
    ("name", "dataset", "hint"),
    [
        ("cnn", CIFAR, "1 x 28 x 28"),
        ("cnn", SYNTHETIC, "1 x 28 x 28"),
        ("resnet18", SYNTHETIC, "C x H x W"),
        ("vgg16", SYNTHETIC, "C x H x W"),
        ("mlp", REGRESSION, "linear"),
        ("resnet18", REGRESSION, "linear"),
        ("linear", CIFAR, "float targets"),
        ("linear", SYNTHETIC, "float targets"),
        ("resnet", CIFAR, "must be one of"),
    ],
)
def test_build_for_refuses_impossible_pairs(name: str, dataset: ArrayDataset, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint) as info:
        build_for(name, dataset)
    assert info.value.parameter == "model" and info.value.value == name


def test_the_cifar_resnets_are_he_et_als() -> None:
    """3 stages of n blocks at 16, 32, 64 channels, resolution halved at stages 2 and 3,
    every conv 3x3 (no 1x1 projection: the shortcuts are option A's)."""
    for name, blocks in (("resnet8", 1), ("resnet20", 3)):
        model = build_model(name)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 1 + 2 * 3 * blocks  # 6n + 2 layers with the Linear
        assert all(c.kernel_size == (3, 3) for c in convs)
        x = torch.relu(model.bn(model.conv(torch.zeros(2, 3, 32, 32))))
        sizes = []
        for block in model.stages:
            x = block(x)
            sizes.append(tuple(x.shape[1:]))
        stage_ends = [sizes[blocks - 1], sizes[2 * blocks - 1], sizes[-1]]
        assert stage_ends == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_bn_models_keep_running_statistics_in_their_vector() -> None:
    """The BatchNorm buffers are floating-point state entries, so they are in x (mixed with
    with the weights, as fedcoop mixes every model's) and change with a training pass."""
    for name, data in (("bn-mlp", torch.randn(8, 784)), ("resnet8", torch.randn(4, 3, 32, 32))):
        model = build_model(name)
        before = model_vector(model).clone()
        assert before.numel() > _num_params(model)
        model.train()
        model(data)
        assert not torch.equal(model_vector(model), before)


def test_bn_mlp_refuses_batches_of_one() -> None:
    with pytest.raises(ConfigError, match="two samples") as info:
        RunConfig.from_mapping({"model": "bn-mlp", "batch-size": 1})
    assert info.value.parameter == "batch-size"
    RunConfig.from_mapping({"model": "bn-mlp", "batch-size": 2})
    RunConfig.from_mapping({"model": "mlp", "batch-size": 1})
