"""A deployment on loopback for the slow tests, set up as docs/deployment.md tells a user to:
a SuperLink with TLS and node authentication, registered node keys and one SuperNode (with
its long-lived ClientApp) per partition, each started with the helper on free ports under
one root directory with its own FLWR_HOME. Every process it starts is remembered by pid,
with its descendants, and `loopback` stops them all by pid however the test ends and checks
that none is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy import processes
from deploy.commands import helper_command
from deploy.flwr_cli import DEFAULT_CONNECTION
from deploy.processes import free_port

REPO = Path(__file__).resolve().parents[1]
HELPER = helper_command()
#: seconds between SuperNode heartbeats (Flower's least): a dead node is reported after 20 s
HEARTBEAT = 10
#: seconds the ServerApp waits for a reply's content (a node killed mid-push never sends it)
PULL_TIMEOUT = 10


@dataclass
class Deployment:
    env: dict[str, str]
    superlink: str
    root: Path
    nodes: int
    #: keep the SuperLink's state in a SQLite file, so that it outlives a restart
    persistent: bool = False
    #: partition i's node id, as the SuperLink answered its key's registration
    node_ids: list[str] = field(default_factory=list)
    #: every process started (and their descendants) seen so far, to check they all end
    seen: set[int] = field(default_factory=set)

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def device(self, i: int) -> Path:
        """Where SuperNode i keeps its worker state (on a real device, its own disk)."""
        return self.root / f"device-{i}"

    def start_superlink(self) -> None:
        """The SuperLink (TLS, node auth) on its port, on its database when persistent."""
        port = self.superlink.rpartition(":")[2]
        database = ["--database", str(self.root / "superlink.db")] if self.persistent else []
        self.helper("superlink", "--state", str(self.state), "--certs", str(self.root / "certs"),
                    "--host", "127.0.0.1", "--port", port, "--pull-timeout", str(PULL_TIMEOUT),
                    *database)  # fmt: skip
        processes.wait_for_port(int(port))
        self.remember()

    def start_supernode(self, i: int) -> None:
        """SuperNode i with its key and device state, on a fresh Runtime API port."""
        self.helper("supernode", "--state", str(self.state), "--superlink", self.superlink,
                    "--root-cert", str(self.ca), "--partition-id", str(i),
                    "--num-partitions", str(self.nodes),
                    "--key", str(self.root / "keys" / f"supernode-{i}.key"),
                    "--runtime-port", str(free_port()), "--state-dir", str(self.device(i)),
                    "--heartbeat-interval", str(HEARTBEAT))  # fmt: skip
        self.remember()

    def remember(self) -> list[int]:
        """The pids of every started process still running, with their descendants (the
        SuperLink's SuperExec and ServerApp among them), added to `seen`."""
        running = processes.running(self.state).values()
        pids = [p for pid in running for p in processes.process_tree(pid)]
        self.seen.update(pids)
        return pids

    def kill(self, *names: str) -> list[int]:
        """SIGKILL the started processes `names` and their descendants, as a power cut;
        returns their pids, every one of them gone."""
        tree = [p for name, pid in processes.running(self.state).items() if name in names
                for p in processes.process_tree(pid)]  # fmt: skip
        self.seen.update(tree)
        assert sorted(processes.stop(self.state, names, kill=True)) == sorted(names)
        assert not any(processes.alive(p) for p in tree), tree
        return tree

    def flwr_json(self, *command: str) -> dict[str, Any]:
        """What the flwr CLI's `command` says about this deployment's SuperLink, in JSON."""
        done = subprocess.run(
            ["flwr", *command, DEFAULT_CONNECTION, "--format", "json"],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def statuses(self) -> dict[str, str]:
        """Node id -> status (online, offline, ...) as the SuperLink reports them."""
        return {n["node-id"]: n["status"] for n in self.flwr_json("supernode", "list")["nodes"]}

    def all_online(self) -> bool:
        return sorted(self.statuses().values()) == ["online"] * self.nodes

    def submit_args(self, config: str) -> list[str]:
        """The helper's arguments that run `config` and stream its log until it ends."""
        return ["submit", str(REPO), "--superlink", self.superlink, "--root-cert",
                str(self.ca), "--stream", "--run-config", config]  # fmt: skip

    @contextmanager
    def submitted(self, config: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
        """`flwr run` of `config` in the background, its output streamed into `log`; killed
        (its process group, by its pid) if it still runs when the block ends."""
        with log.open("w") as out:
            submit = subprocess.Popen(
                [*HELPER, *self.submit_args(config)], env=self.env, cwd=REPO,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            yield submit
        finally:
            if submit.poll() is None:
                os.killpg(submit.pid, signal.SIGKILL)
                submit.wait()

    def helper(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [*HELPER, *args]
        done = subprocess.run(
            command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done


@contextmanager
def loopback(root: Path, nodes: int, *, persistent: bool = False) -> Iterator[Deployment]:
    """A SuperLink with TLS and node auth and `nodes` SuperNodes, all on loopback under
    `root`; every process stopped by pid at the end, and none left running."""
    env = {**os.environ, **processes.FLOWER_ENV, "FLWR_HOME": str(root / "cli")}
    d = Deployment(env, f"127.0.0.1:{free_port()}", root, nodes, persistent)
    link = ["--superlink", d.superlink, "--root-cert", str(d.ca)]
    try:
        d.helper("certs", str(root / "certs"), "--host", "localhost", "127.0.0.1")
        d.helper("keys", str(root / "keys"), "--nodes", str(nodes))
        d.start_superlink()
        keys = [str(root / "keys" / f"supernode-{i}.pub") for i in range(nodes)]
        registered = d.helper("register", *link, *keys).stdout
        d.node_ids = re.findall(r"SuperNode (\d+) registered successfully", registered)
        assert len(d.node_ids) == nodes, registered
        for i in range(nodes):
            d.start_supernode(i)
        yield d
    finally:
        d.remember()
        processes.stop(d.state)
        assert not [p for p in d.seen if processes.alive(p)]


def wait_for(what: str, ready: Callable[[], bool], timeout: float, every: float = 0.5) -> float:
    """Seconds until `ready()`; fails after `timeout`."""
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - start


def saved_round(device: Path, earlier: set[Path]) -> int:
    """The last round the worker on `device` wrote to the state file of a run not among
    `earlier` runs' files (0: none yet)."""
    files = set(device.glob("*-partition-*.npz")) - earlier
    if not files:
        return 0
    with np.load(files.pop()) as f:  # written by rename: always whole
        return int(f["meta"][0])
