"""simulations.deploy: certificates, keys, process control, and a real deployment on loopback.

The slow tests start a SuperLink (TLS, node authentication) and three SuperNodes with the
helper, exactly as docs/deployment.md tells a user to, submit runs with `flwr run`, and check
that each run's final models equal those of the same config simulated in-process. Every
process is started on free ports under the test's own state directory and FLWR_HOME, and
stopped by pid (with its descendants) however the test ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from clients.client_app import app as client_app
from fedcoop.config import RunConfig
from simulations import deploy
from simulations.inprocess import InProcessGrid
from strategies.server_app import run

REPO = Path(__file__).resolve().parents[1]
NODES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_certificates_name_every_host_and_chain_to_the_ca(tmp_path: Path) -> None:
    deploy.write_certificates(tmp_path, ["edge-hub.local", "10.0.0.7", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["edge-hub.local"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.7",
        "127.0.0.1",
    ]
    server.verify_directly_issued_by(ca)
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600


def test_node_keys_are_openssh_p384_pairs(tmp_path: Path) -> None:
    deploy.write_node_keys(tmp_path, 2)
    for i in range(2):
        key = load_ssh_private_key((tmp_path / f"supernode-{i}.key").read_bytes(), None)
        public = (tmp_path / f"supernode-{i}.pub").read_text()
        assert public.startswith("ecdsa-sha2-nistp384 ")
        assert key.public_key() == load_ssh_public_key(public.encode())


def test_connection_is_added_to_flwr_config_keeping_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n\n'
        '[superlink.other]\naddress = "10.0.0.1:9093"\ninsecure = true\n'
    )
    deploy.write_connection("fedcoop", "hub:9093", tmp_path / "ca.crt")
    deploy.write_connection("fedcoop", "hub:9094", tmp_path / "ca.crt")
    text = (tmp_path / "config.toml").read_text()
    assert 'address = "10.0.0.1:9093"' in text and 'address = "hub:9094"' in text
    assert "hub:9093" not in text and f'root-certificates = "{tmp_path}/ca.crt"' in text


def test_stop_ends_a_process_and_its_detached_children(tmp_path: Path) -> None:
    # The child starts its own session, as Flower's SuperExec does.
    script = (
        "import subprocess, time; "
        "subprocess.Popen(['sleep', '60'], start_new_session=True); time.sleep(60)"
    )
    pid = deploy.start(tmp_path, "tree", [sys.executable, "-c", script], dict(os.environ))
    deadline = time.monotonic() + 10
    while len(deploy._tree(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = deploy._tree(pid)
    assert len(tree) == 2
    assert deploy.stop(tmp_path) == ["tree"]
    assert not any(deploy._alive(p) for p in tree)
    assert deploy.running(tmp_path) == {}


# -- a real deployment on loopback ------------------------------------------------------------
@dataclass
class Deployment:
    env: dict[str, str]
    superlink: str
    ca: Path
    runs: Path

    def helper(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "simulations.deploy", *args]
        done = subprocess.run(
            command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A SuperLink with TLS and node auth and three SuperNodes, all on loopback."""
    root = tmp_path_factory.mktemp("deployment")
    state = root / "state"
    env = {**os.environ, **deploy.FLOWER_ENV, "FLWR_HOME": str(root / "cli")}
    d = Deployment(env, f"127.0.0.1:{_free_port()}", root / "certs" / "ca.crt", root / "runs")
    link = ["--superlink", d.superlink, "--root-cert", str(d.ca)]
    try:
        d.helper("certs", str(root / "certs"), "--host", "localhost", "127.0.0.1")
        d.helper("keys", str(root / "keys"), "--nodes", str(NODES))
        port = d.superlink.rpartition(":")[2]
        d.helper("superlink", "--state", str(state), "--certs", str(root / "certs"),
                 "--host", "127.0.0.1", "--port", port)  # fmt: skip
        _wait_for_port(int(port))
        keys = [str(root / "keys" / f"supernode-{i}.pub") for i in range(NODES)]
        d.helper("register", *link, *keys)
        for i in range(NODES):
            d.helper("supernode", "--state", str(state), *link,
                     "--partition-id", str(i), "--num-partitions", str(NODES),
                     "--key", str(root / "keys" / f"supernode-{i}.key"),
                     "--runtime-port", str(_free_port()))  # fmt: skip
        yield d
    finally:
        deploy.stop(state)
        assert deploy.running(state) == {}


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        "algorithm='overlap' tau=2 dataset='least-squares' model='linear' batch-size=0",
        "algorithm='dpsgd' topology='ring' tau=2 dataset='mnist-embedded' model='logreg' "
        "batch-size=16",
    ],
    ids=["overlap", "dpsgd-ring"],
)
def test_deployment_matches_simulation(deployment: Deployment, overrides: str) -> None:
    runs = deployment.runs / overrides.split("'")[1]
    config = f"num-clients={NODES} num-rounds=3 seed=3 results-dir='{runs}' {overrides}"
    deployment.helper(
        "submit", str(REPO), "--superlink", deployment.superlink, "--root-cert",
        str(deployment.ca), "--stream", "--run-config", config, timeout=600,
    )  # fmt: skip
    (run_dir,) = runs.iterdir()
    deployed = np.load(run_dir / "final-models.npz")
    resolved = json.loads((run_dir / "config.json").read_text())["config"]
    simulated = run(
        InProcessGrid(client_app, NODES, seed=1),
        RunConfig.from_mapping({**resolved, "results-dir": ""}),
    )
    assert simulated.workers is not None
    np.testing.assert_allclose(deployed["workers"], simulated.workers, atol=1e-6, rtol=0)
    if simulated.aux is not None and simulated.aux.size:
        np.testing.assert_allclose(deployed["aux"], simulated.aux, atol=1e-6, rtol=0)
    # the workers really trained: the final models differ from each other
    assert np.ptp(deployed["workers"], axis=0).max() > 1e-4
