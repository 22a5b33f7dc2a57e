"""The command line starts at once: `fedcoop --help` and `fedcoop analyze` import neither
torch nor Flower nor the data and plotting libraries (seconds of imports on a small
machine); the commands that train import them when they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "flwr", "ray", "datasets", "flwr_datasets", "matplotlib")

SCRIPT = f"""
import sys
from simulations.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
main(["analyze", "algorithm=easgd", "num-clients=8"])
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_help_and_analyze_import_no_heavy_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    assert "alpha" in done.stdout  # analyze printed its table
    assert done.stdout.strip().splitlines()[-1] == "[]"


TRAIN_ONE_ROUND = """
import sys
from fedcoop.config import RunConfig
from simulations.runner import run_config
config = {"num-clients": 2, "num-rounds": 1, "tau": 2, "results-dir": "", "model": "cnn"}
run_config(RunConfig.from_mapping(config), engine=sys.argv[1], quiet=True)
print("torch._dynamo" in sys.modules)
"""


@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
def test_a_round_of_the_cnn_trains_without_importing_torch_dynamo(engine: str) -> None:
    """Workers take their gradients with autograd, a batch of them through one vmap of the
    loss: torch.func's grad transform imports torch._dynamo, 150 MB that a device would
    carry for nothing. The server side of the run (strategy, evaluation) imports it neither."""
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_ONE_ROUND, engine],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
