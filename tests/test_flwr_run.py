"""`flwr run .` end to end, as the README tells a user to type it (slow: minutes).

Each test gets its own FLWR_HOME and SuperLink ports, so it never touches a user's SuperLink,
and stops the SuperLink that `flwr run` left running by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes import free_port
from fedcoop.algorithms import ALGORITHMS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _pids_with(text: str) -> list[int]:
    """Processes whose command line mentions `text` (the SuperLink names its FLWR_HOME)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def flwr_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    yield env
    for pid in _pids_with(str(home)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10  # SIGKILL is not instant: wait for the exit
    while _pids_with(str(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_with(str(home))


def _flwr_run(env: dict[str, str], results: Path, run_config: str, nodes: int) -> str:
    cmd = [
        "flwr", "run", str(REPO), "--stream",
        "--federation-config", f"num-supernodes={nodes}",
        "--run-config", f"results-dir='{results}' {run_config}",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "cooperative"])
def test_flwr_run_trains_every_algorithm(
    algorithm: str, flwr_env: dict[str, str], tmp_path: Path
) -> None:
    output = _flwr_run(
        flwr_env, tmp_path / "runs", f"algorithm='{algorithm}' num-rounds=3 num-clients=4", 4
    )
    assert "round   3 | train-loss" in output and "test-accuracy" in output, output
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert json.loads((run_dir / "config.json").read_text())["config"]["algorithm"] == algorithm


def test_flwr_run_cooperative_with_a_user_matrix(flwr_env: dict[str, str], tmp_path: Path) -> None:
    matrix = tmp_path / "w.csv"
    matrix.write_text("0.5,0.25,0.25\n0.25,0.5,0.25\n0.25,0.25,0.5\n")
    output = _flwr_run(
        flwr_env,
        tmp_path / "runs",
        f"algorithm='cooperative' matrix-file='{matrix}' num-clients=3 num-rounds=2",
        3,
    )
    assert "round   2 | train-loss" in output, output


def test_flwr_run_short_of_simulated_nodes_stops_at_once(
    flwr_env: dict[str, str], tmp_path: Path
) -> None:
    """The README's command without --federation-config: Flower simulates 2 nodes for
    num-clients=8, and the run stops within 30 s of the simulation's start (not after
    round-timeout) naming the flag to pass."""
    cmd = ["flwr", "run", str(REPO), "--stream", "--run-config", f"results-dir='{tmp_path}'"]
    lines: list[tuple[float, str]] = []  # (when it came, line)
    with subprocess.Popen(
        cmd, env=flwr_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as flwr:
        assert flwr.stdout is not None
        out = flwr.stdout
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), x) for x in out))
        reader.start()
        try:
            flwr.wait(timeout=300)
        finally:
            flwr.kill()
            reader.join()
    output = "".join(line for _, line in lines)
    started = [t for t, line in lines if "Starting Flower Simulation" in line]
    failed = [t for t, line in lines if 'pass --federation-config "num-supernodes=8"' in line]
    assert started and failed, output
    assert failed[0] - started[0] < 30, output
