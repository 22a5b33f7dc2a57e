"""Model shapes, sizes, the name registry, and that each model can actually learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcoop.errors import ConfigError
from fedcoop.models import (
    MLP,
    MODELS,
    LinearRegression,
    LogisticRegression,
    SmallCNN,
    build_model,
)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names() -> None:
    assert MODELS == ("cnn", "mlp", "logreg", "linear")
    assert isinstance(build_model("cnn"), SmallCNN)
    assert isinstance(build_model("mlp"), MLP)
    assert isinstance(build_model("logreg"), LogisticRegression)
    assert isinstance(build_model("linear", in_features=3), LinearRegression)


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
    with pytest.raises(ConfigError, match="cnn, mlp, logreg, linear") as info:
        build_model("resnet")
    assert info.value.parameter == "model"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("linear", {}), ("cnn", {"width": 3}), ("logreg", {"in_features": 4, "bias": False})],
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
    ],
)
def test_bad_layer_sizes_are_refused(name: str, kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name, **kwargs)
    assert info.value.parameter == parameter
