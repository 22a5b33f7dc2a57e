"""The simulation engine on an existing Ray cluster (--ray-address): a local head node this
test starts, owns and stops by its process group, never with a bare `ray stop` (which would
stop every Ray instance of the machine's user, other runs' too)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes import free_port
from simulations.runner import run_config
from tests.conftest import least_squares_config

#: what `ray start --block` prints once the head's processes all run
STARTED = "Ray runtime started"


def _session_members(session: int) -> list[int]:
    """Pids of the live processes in session `session` (what `ray start` and its children
    run in when started in a new session)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        # after the command: state, ppid, pgrp, session; a zombie has run its course
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def ray_head() -> Iterator[tuple[str, Path]]:
    """(address, temp dir) of a 2-CPU Ray head node on 127.0.0.1, stopped afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="fedcoop-ray-"))  # short: Ray puts sockets in it
    port = free_port()
    log = (temp / "head.log").open("w")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
            f"--temp-dir={temp}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own session: every process it starts is ours to stop
    )
    try:
        deadline = time.monotonic() + 120
        while STARTED not in (temp / "head.log").read_text():
            assert head.poll() is None, (temp / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", temp
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _session_members(head.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _session_members(head.pid)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"the Ray head's processes outlived it: {left}"


def _client_actor_logs(temp: Path) -> list[Path]:
    """The head's log files of the worker processes that hosted Flower's ClientApp actors
    (Ray writes each actor worker's name at the top of its .out file)."""
    logs = temp.glob("session_latest/logs/worker-*.out")
    return [p for p in logs if ":actor_name:ClientAppActor" in p.read_text()]


@pytest.mark.slow
def test_a_run_on_an_existing_ray_cluster_uses_its_nodes(ray_head: tuple[str, Path]) -> None:
    address, temp = ray_head
    config = least_squares_config(num_clients=2, num_rounds=2)
    result = run_config(
        config, engine="simulation", quiet=True, gpus_per_client=0, ray_address=address
    )
    assert [row["round"] for row in result.rounds] == [1, 2]
    # 2 CPUs at 1 per client: Flower's pool put its 2 actors on the head's node, so their
    # logs (and the driver's, job 01000000: the cluster's first) are in the head's temp dir
    assert len(_client_actor_logs(temp)) == 2
    assert list(temp.glob("session_latest/logs/python-core-driver-01000000*"))
