"""The command line starts at once: `fedcoop --help` and `fedcoop analyze` import neither
torch nor Flower nor the data and plotting libraries (seconds of imports on a small
machine); the commands that train import them when they run."""

from __future__ import annotations

import subprocess
import sys

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
