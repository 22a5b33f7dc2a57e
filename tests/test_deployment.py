"""deploy: certificates, keys, process control, and a real deployment on loopback.

The slow tests start a SuperLink (TLS, node authentication) and three SuperNodes with the
helper, exactly as docs/deployment.md tells a user to, submit runs with `flwr run`, and check
that each run's final models equal those of the same config simulated in-process, and that a
run rides out a SuperNode killed mid-run, which then rejoins from the state it kept on its
device; that it refuses SuperNodes with an unregistered key or without its CA, and that no
file but their own holds a private key or SuperExec secret after a run. Every process is
started on free ports under the test's own state directory and FLWR_HOME, and stopped by pid
(with its descendants) however the test ends.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from clients.client_app import app as client_app
from deploy import credentials, processes
from deploy.clientapp_server import restart_argv
from deploy.commands import superlink_command
from deploy.flwr_cli import write_connection
from deploy.processes import free_port
from fedcoop.config import RunConfig
from simulations import cli
from simulations.inprocess import InProcessGrid
from strategies.server_app import run
from tests.conftest import assert_matches_reference, assert_paths_agree, recorded_result
from tests.loopback import (
    HEARTBEAT,
    HELPER,
    REPO,
    Deployment,
    loopback,
    saved_round,
    wait_for,
)

NODES = 3


def test_certificates_name_every_host_and_chain_to_the_ca(tmp_path: Path) -> None:
    credentials.write_certificates(tmp_path, ["edge-hub.local", "10.0.0.7", "127.0.0.1"])
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
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


def test_node_keys_are_openssh_p384_pairs(tmp_path: Path) -> None:
    credentials.write_node_keys(tmp_path, 2)
    for i in range(2):
        key = load_ssh_private_key((tmp_path / f"supernode-{i}.key").read_bytes(), None)
        public = (tmp_path / f"supernode-{i}.pub").read_text()
        assert public.startswith("ecdsa-sha2-nistp384 ")
        assert key.public_key() == load_ssh_public_key(public.encode())
        assert (tmp_path / f"supernode-{i}.key").stat().st_mode & 0o777 == 0o600


def test_superexec_secrets_are_fresh_and_owner_only(tmp_path: Path) -> None:
    first = credentials.superexec_secret(tmp_path, 0)
    again = first.read_bytes()
    assert credentials.superexec_secret(tmp_path, 0).read_bytes() != again
    assert len(again) == 32 and first.stat().st_mode & 0o777 == 0o600


def test_the_superlink_will_not_start_without_tls_unless_told_insecure(tmp_path: Path) -> None:
    """No --certs and no --insecure, both, or a certs directory without the SuperLink's
    files: refused with a message saying what to give, before anything starts."""
    state, certs, partial = tmp_path / "state", tmp_path / "certs", tmp_path / "partial"
    credentials.write_certificates(certs, ["127.0.0.1"])
    partial.mkdir()
    (partial / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())

    def refusal(*flags: str) -> str:
        port = str(free_port())
        try:
            with pytest.raises(SystemExit) as refused:
                cli.main(["deploy", "superlink", "--state", str(state), "--host", "127.0.0.1",
                          "--port", port, *flags])  # fmt: skip
        finally:
            processes.stop(state)  # should the refusal fail, nothing stays running
        assert not state.exists()  # no pid file, no log, no shim: nothing started
        return str(refused.value)

    no_tls = "superlink: give --certs DIR (TLS), or --insecure to run without TLS"
    assert refusal() == no_tls
    assert refusal("--certs", str(certs), "--insecure") == no_tls
    assert refusal("--certs", str(partial)) == (
        f"superlink: --certs {partial} has no server.crt, server.key "
        f"(write them with `deploy certs {partial}`)"
    )


def test_connection_is_added_to_flwr_config_keeping_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n\n'
        '[superlink.other]\naddress = "10.0.0.1:9093"\ninsecure = true\n'
    )
    write_connection("fedcoop", "hub:9093", tmp_path / "ca.crt")
    write_connection("fedcoop", "hub:9094", tmp_path / "ca.crt")
    text = (tmp_path / "config.toml").read_text()
    assert 'address = "10.0.0.1:9093"' in text and 'address = "hub:9094"' in text
    assert "hub:9093" not in text and f'root-certificates = "{tmp_path}/ca.crt"' in text


def test_stop_ends_a_process_and_its_detached_children(tmp_path: Path) -> None:
    # The child starts its own session, as Flower's SuperExec does.
    script = (
        "import subprocess, time; "
        "subprocess.Popen(['sleep', '60'], start_new_session=True); time.sleep(60)"
    )
    pid = processes.start(tmp_path, "tree", [sys.executable, "-c", script], dict(os.environ))
    deadline = time.monotonic() + 10
    while len(processes.process_tree(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = processes.process_tree(pid)
    assert len(tree) == 2
    assert processes.stop(tmp_path) == ["tree"]
    assert not any(processes.alive(p) for p in tree)


def test_the_superlink_keeps_its_state_in_a_database_only_when_given_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--database FILE reaches flower-superlink as an absolute path (its SQLite state
    outlives a restart: tests/test_soak.py); without it Flower keeps the state in memory."""
    monkeypatch.chdir(tmp_path)
    command = superlink_command(None, "127.0.0.1", 9093, database=Path("link.db"))
    assert command[command.index("--database") + 1] == str(tmp_path / "link.db")
    assert "--database" not in superlink_command(None, "127.0.0.1", 9093)


def test_python_m_deploy_and_fedcoop_deploy_run_the_same_commands(tmp_path: Path) -> None:
    done = subprocess.run(
        [*HELPER, "keys", str(tmp_path / "helper"), "--nodes", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    keys = ["supernode-0.key", "supernode-0.pub"]
    assert done.stdout.split() == [str(tmp_path / "helper" / k) for k in keys]
    cli.main(["deploy", "keys", str(tmp_path / "fedcoop"), "--nodes", "1"])
    assert sorted(p.name for p in (tmp_path / "fedcoop").iterdir()) == keys


def test_a_clientapp_restarted_for_a_new_app_runs_as_started_serving_the_new_task() -> None:
    started = [sys.executable, "-X", "utf8", *HELPER[1:], "clientapp", "127.0.0.1:9094"]
    restarted = restart_argv([*started, "--token", "old"], "old", "new")
    assert restarted == [*started, "--token", "new"]
    assert restart_argv(started, None, "new") == restarted
    # the command line runs from the repository (argparse answers --help and exits 0)
    done = subprocess.run(
        [*restarted, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "runtime_api_address" in done.stdout


# -- a real deployment on loopback ------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A SuperLink with TLS and node auth and three SuperNodes, all on loopback."""
    with loopback(tmp_path_factory.mktemp("deployment"), NODES) as d:
        yield d


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        "algorithm='overlap' tau=2 dataset='least-squares' model='linear' batch-size=0",
        "algorithm='dpsgd' topology='ring' tau=2 dataset='mnist-embedded' model='logreg' "
        "batch-size=16",
        # the local steps run in the long-lived ClientApp's background thread
        "algorithm='overlap' tau=4 dataset='mnist-embedded' model='logreg' batch-size=16 "
        "momentum=0.9 eager-reply=true",
        # Flower's stock strategy, its standard messages through the SuperLink
        "algorithm='flower:FedAdam' strategy-args='{\"eta\":0.3}' tau=2 "
        "dataset='least-squares' model='linear' batch-size=0",
    ],
    ids=["overlap", "dpsgd-ring", "overlap-eager", "flower-fedadam"],
)
def test_deployment_matches_simulation(
    deployment: Deployment, overrides: str, request: pytest.FixtureRequest
) -> None:
    runs = deployment.runs / request.node.callspec.id
    config = f"num-clients={NODES} num-rounds=3 seed=3 results-dir='{runs}' {overrides}"
    deployment.helper(*deployment.submit_args(config), timeout=600)
    (run_dir,) = runs.iterdir()
    deployed = np.load(run_dir / "final-models.npz")
    resolved = json.loads((run_dir / "config.json").read_text())["config"]
    simulated = run(
        InProcessGrid(client_app, NODES, seed=1),
        RunConfig.from_mapping({**resolved, "results-dir": ""}),
    )
    expected = {
        "workers": simulated.workers,
        "aux": simulated.aux,
        "server": simulated.server_model,
    }
    assert deployed.files == [k for k, v in expected.items() if v is not None]
    for key in deployed.files:
        assert_paths_agree(deployed[key], expected[key])
    if "workers" in deployed.files:
        # the workers really trained: the final models differ from each other
        assert np.ptp(deployed["workers"], axis=0).max() > 1e-4


# -- a SuperNode that dies mid-run, and comes back -------------------------------------------
@pytest.mark.slow
def test_a_killed_supernode_is_left_out_then_rejoins_from_its_state(
    deployment: Deployment,
) -> None:
    """SIGKILL SuperNode 2 and its ClientApp after round 3: the survivors go on without it
    (a failed reply or the round deadline, then Flower reports the node unavailable);
    restarted with the same key and device state, it keeps its node id and trains again
    from its own last round."""
    victim, tau, rounds = NODES - 1, 2, 60
    runs = deployment.runs / "faults"
    config = (
        f"num-clients={NODES} num-rounds={rounds} seed=3 results-dir='{runs}' "
        f"algorithm='overlap' tau={tau} dataset='least-squares' model='linear' batch-size=0 "
        "round-deadline=5 round-timeout=120 quorum=0.3"
    )
    device = deployment.device(victim)
    earlier = set(device.glob("*-partition-*.npz"))
    wait_for("all nodes online", deployment.all_online, 120)
    nodes = deployment.statuses()
    log = deployment.root / "faults.log"
    with deployment.submitted(config, log) as submit:
        wait_for("round 3 on the victim", lambda: saved_round(device, earlier) >= 3, 300, 0.05)
        deployment.kill(f"supernode-{victim}", f"clientapp-{victim}")
        detected = wait_for(
            "the SuperLink reports the node offline",
            lambda: "offline" in deployment.statuses().values(),
            timeout=4 * HEARTBEAT,
        )
        print(f"killed node reported offline after {detected:.1f}s")
        deployment.start_supernode(victim)
        assert submit.wait(timeout=600) == 0, log.read_text()[-5000:]
    # same node ids, all online again (the status follows heartbeats: give it two)
    wait_for("the same nodes online again", lambda: deployment.statuses() == nodes, 2 * HEARTBEAT)

    (run_dir,) = runs.iterdir()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    # Only the victim misses rounds. How its first one ends depends on when the kill lands:
    # a reply cut off mid-push (failed), or a message left unanswered (deadline, then late);
    # once the SuperLink has noticed, its messages fail at once as Node Unavailable.
    assert {e["worker"] for e in events} == {victim}, events
    assert {e["kind"] for e in events} <= {"failed", "deadline", "late", "busy"}, events
    assert any("Node Unavailable" in e["reason"] for e in events if e["kind"] == "failed")
    faults = json.loads((run_dir / "final.json").read_text())["faults"]
    assert faults == dict(Counter(e["kind"] for e in events))
    participants = [
        json.loads(line)["participants"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(participants) == rounds
    out = next(r for r, n in enumerate(participants) if n < NODES)  # the first one short
    back = out + participants[out:].index(NODES)  # the first after it with all of them
    assert 2 <= out < back < rounds, participants  # out from round 3 (index 2) or later
    print(f"victim out from round {out + 1}, back in round {back + 1} of {rounds}")
    # the final models are the matrix rule's over the workers that answered each round
    assert_matches_reference(*recorded_result(run_dir))

    # It resumed from its own state: the restarted ClientApp loaded round >= 3 from the
    # device, and its steps count every round it trained, before the kill and after.
    restored = processes.log_file(deployment.state, f"clientapp-{victim}").read_text()
    assert "restored the worker of round" in restored
    missed = {e["round"] for e in events if e["worker"] == victim and e["kind"] != "late"}
    (state,) = set(device.glob("*-partition-*.npz")) - earlier
    with np.load(state) as f:
        last, steps = (int(v) for v in f["meta"])
    assert last == rounds + 1
    assert steps >= tau * (rounds - len(missed)), (steps, sorted(missed))


# -- who may connect, and what stays secret ---------------------------------------------------
def _refused(d: Deployment, name: str, *flags: str) -> str:
    """The log of Flower's SuperNode started with `flags`, which must be refused and exit
    within 60 s (else it is killed by pid, with its children)."""
    log = d.state / f"{name}.log"
    command = ["flower-supernode", "--superlink", d.superlink, "--isolation", "process",
               "--node-config", f"partition-id=0 num-partitions={NODES}",
               "--host", "127.0.0.1", "--port", str(free_port()), *flags]  # fmt: skip
    env = processes.process_env(d.state / "home" / name)
    with log.open("w") as out:
        node = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        code = node.wait(timeout=60)
    finally:
        for pid in processes.process_tree(node.pid) if node.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
        node.wait()
    text = log.read_text()
    assert code != 0 and "Failed to initialize the connection to the SuperLink." in text, text
    return text


@pytest.mark.slow
def test_a_supernode_whose_key_is_not_registered_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    """TLS is fine, but the SuperLink knows no node by this key: its activation fails
    (HTTP 412, Flower's FLEET_NODE_ACTIVATION_FAILED) and the SuperNode exits before it
    pulls anything; the federation keeps its registered nodes only."""
    credentials.write_node_keys(tmp_path, 1)
    superlink_log = processes.log_file(deployment.state, "superlink")
    before = superlink_log.stat().st_size
    log = _refused(deployment, "unregistered", "--root-certificates", str(deployment.ca),
                   "--auth-supernode-private-key", str(tmp_path / "supernode-0.key"))  # fmt: skip
    assert "[code: 2004] Failed to activate SuperNode." in log
    with superlink_log.open() as f:
        f.seek(before)
        assert "No SuperNode found with the given public key." in f.read()
    assert len(deployment.statuses()) == NODES


@pytest.mark.slow
@pytest.mark.parametrize("ca", ["another", "none"])
def test_a_supernode_without_the_superlinks_ca_cannot_connect(
    deployment: Deployment, tmp_path: Path, ca: str
) -> None:
    """With another CA's certificate, or none (no --root-certificates, not --insecure: the
    system's CAs), the TLS handshake fails and the SuperNode exits. Its key is unregistered,
    so a handshake that wrongly succeeded would fail later, with another message."""
    credentials.write_node_keys(tmp_path, 1)
    flags = ["--auth-supernode-private-key", str(tmp_path / "supernode-0.key")]
    if ca == "another":
        credentials.write_certificates(tmp_path / "other", ["localhost", "127.0.0.1"])
        flags += ["--root-certificates", str(tmp_path / "other" / "ca.crt")]
    log = _refused(deployment, f"ca-{ca}", *flags)
    assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in log
    assert ("Using system certificates for TLS connection" in log) == (ca == "none")


def _leak_patterns(d: Deployment) -> dict[Path, list[bytes]]:
    """Each private key and SuperExec secret file of the deployment -> the forms its secret
    would show in if it leaked: raw, hex, decimal, and for a key the base64 that encodes its
    secret scalar in the PEM file (so a pasted PEM shows too)."""
    out = {}
    for path in [*(d.root / "certs").glob("*.key"), *(d.root / "keys").glob("*.key")]:
        pem = path.read_bytes()
        load = load_ssh_private_key if b"OPENSSH" in pem else load_pem_private_key
        value = load(pem, None).private_numbers().private_value
        secret = value.to_bytes((value.bit_length() + 7) // 8, "big")
        body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
        start = base64.b64decode(body).find(secret)
        assert start >= 0
        # the base64 characters that encode the secret's bytes and nothing else
        encoded = body[4 * -(-start // 3) : 4 * ((start + len(secret)) // 3)]
        out[path] = [secret, secret.hex().encode(), str(value).encode(), encoded]
    for path in d.state.glob("*.secret"):
        secret = path.read_bytes()
        b64 = [base64.b64encode(secret), base64.urlsafe_b64encode(secret)]
        out[path] = [secret, secret.hex().encode(), *(b.rstrip(b"=") for b in b64)]
    return out


@pytest.mark.slow
def test_no_secret_lands_in_logs_or_run_directories(deployment: Deployment) -> None:
    """After a run, no file of the deployment (logs, process homes, results, device state,
    the CLI's config) but the owner-only ones they live in holds a private key or a
    SuperExec secret."""
    runs = deployment.runs / "secrets"
    config = (
        f"num-clients={NODES} num-rounds=2 seed=3 results-dir='{runs}' algorithm='overlap' "
        "tau=2 dataset='least-squares' model='linear' batch-size=0"
    )
    deployment.helper(*deployment.submit_args(config), timeout=600)
    patterns = _leak_patterns(deployment)
    assert len(patterns) == 2 + 2 * NODES  # ca.key, server.key, node keys, SuperExec secrets
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in patterns)
    # the patterns find each secret in its own file (a key's in its PEM text)
    assert all(_holds(path.read_bytes(), forms) for path, forms in patterns.items())
    scanned = [p for p in deployment.root.rglob("*") if p.is_file() and p not in patterns]
    assert any(p.name == "superlink.log" for p in scanned)
    assert any(p.name == "final.json" and runs in p.parents for p in scanned)
    for path in scanned:
        data = path.read_bytes()
        leaked = [k.name for k, forms in patterns.items() if _holds(data, forms)]
        assert not leaked, f"{path} holds {leaked}"


def _holds(data: bytes, forms: list[bytes]) -> bool:
    """Whether `data` holds one of `forms`, also once its whitespace and escaped newlines
    are removed (a PEM pasted into a log, or its repr)."""
    compact = re.sub(rb"\s|\\n", b"", data)
    return any(f in data or f in compact for f in forms)
