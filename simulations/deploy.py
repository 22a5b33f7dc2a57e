"""Deploy fedcoop on real devices: one SuperLink, one SuperNode per worker, TLS and node auth.

``python -m simulations.deploy <command>`` (``fedcoop deploy <command>``) scripts the steps of
Flower 1.41's deployment runtime so that a run moves from ``flwr run .`` in simulation to
devices with the same app and run config: ``certs`` (a CA and a SuperLink certificate),
``keys`` (SuperNode auth key pairs), ``superlink``, ``register`` (node public keys),
``supernode``, ``submit`` (``flwr run`` against the SuperLink), ``logs`` and ``stop``.

Started processes run in the background, each in its own session, with a pid file and a log
in the state directory, so ``stop`` can end exactly them and their children.

Why a SuperNode here is two processes: with Flower's default ``--isolation subprocess`` each
message starts a fresh ``flwr-clientapp`` that imports torch and rebuilds the worker (seconds
per message), and Flower 1.41's ``flwr-clientapp`` serves one task and exits, so it cannot be
kept alive. ``supernode`` therefore starts the SuperNode with ``--isolation process`` plus
``clientapp``, a long-lived process that takes the SuperNode's tasks off its Runtime API and
runs the ClientApp in-process, as ``flwr-clientapp`` does, but for every message. The
SuperNode itself runs with its hard-coded idle waits (3 s between empty pulls, 0.5 s while
waiting for a reply) shortened to ``--poll-interval``. docs/deployment.md has the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_STATE = Path(".fedcoop-deploy")
DEFAULT_PORT = 9093
DEFAULT_RUNTIME_PORT = 9094
DEFAULT_CONNECTION = "fedcoop"
#: seconds between polls of every waiting process (each costs about a millisecond of CPU)
DEFAULT_POLL = 0.05
#: the heartbeat interval a SuperNode reports (Flower's default; the SuperLink accepts 10 to
#: 1800 s and marks a node offline after 2 intervals without a heartbeat)
DEFAULT_HEARTBEAT = 30.0
#: seconds the ServerApp waits for the content of a reply that has arrived
DEFAULT_PULL_TIMEOUT = 300.0
HEARTBEAT_RANGE = (10.0, 1800.0)
#: Flower's own defaults for processes this helper starts: no `uv sync`, no calls home.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


# -- certificates and keys ----------------------------------------------------------------
def write_certificates(directory: Path, hosts: Sequence[str], days: int = 365) -> list[Path]:
    """A CA and a SuperLink certificate it signs, valid for `hosts` (names or IPs).

    SuperNodes and the CLI verify the SuperLink against ca.crt, so every address they dial
    must be one of the certificate's SANs.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcoop"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    def san(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedcoop CA"))
        .issuer_name(name("fedcoop CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(x509), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    key_format = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    files = {
        "ca.crt": ca.public_bytes(pem),
        "ca.key": ca_key.private_bytes(pem, *key_format),
        "server.crt": server.public_bytes(pem),
        "server.key": server_key.private_bytes(pem, *key_format),
    }
    return [_write(directory / f, data, secret=f.endswith(".key")) for f, data in files.items()]


def _ca_usage(x509: Any) -> Any:
    """Key usage of a CA that signs certificates and nothing else."""
    unused = ["content_commitment", "key_encipherment", "data_encipherment", "key_agreement"]
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
        **dict.fromkeys(unused, False),
    )


def write_node_keys(directory: Path, nodes: int) -> list[Path]:
    """`nodes` SuperNode auth key pairs (OpenSSH EC P-384, the format Flower 1.41 reads):
    supernode-<i>.key stays on device i, supernode-<i>.pub is registered with the SuperLink."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        paths.append(_write(directory / f"supernode-{i}.key", private, secret=True))
        paths.append(_write(directory / f"supernode-{i}.pub", public + b"\n"))
    return paths


def superexec_secret(state: Path, partition_id: int) -> Path:
    """A fresh secret (mode 0600) that SuperNode `partition_id` and its long-lived ClientApp
    share, so that no other local process can take the SuperNode's tasks."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"superexec-{partition_id}.secret"
    return _write(path, secrets.token_bytes(32), secret=True).resolve()


def _write(path: Path, content: bytes, *, secret: bool = False) -> Path:
    path.write_bytes(content)
    if secret:
        path.chmod(0o600)
    return path


# -- the CLI's SuperLink connection ---------------------------------------------------------
def write_connection(
    name: str, address: str, root_certificates: Path | None, insecure: bool = False
) -> Path:
    """Add or replace [superlink.<name>] in $FLWR_HOME/config.toml, where Flower 1.41 keeps
    connections (never pyproject.toml), keeping every other entry; returns the file."""
    from flwr.cli.flower_config import write_superlink_connection
    from flwr.cli.typing import SuperLinkConnection
    from flwr.supercore.utils import get_flwr_home

    tls = None if insecure or root_certificates is None else root_certificates
    connection = SuperLinkConnection(
        name=name,
        address=address,
        root_certificates=None if tls is None else str(tls.expanduser().resolve()),
        insecure=True if insecure else None,
    )
    write_superlink_connection(connection)
    return get_flwr_home() / "config.toml"


# -- loopback ports ---------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for loopback deployments)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60) -> None:
    """Return once something listens on 127.0.0.1:`port` (a started SuperLink)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


# -- background processes -------------------------------------------------------------------
def _pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def log_file(state: Path, name: str) -> Path:
    return state / f"{name}.log"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Flower detaches the SuperExec into its own session,
    so a process group alone does not reach it)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def running(state: Path) -> dict[str, int]:
    """Name -> pid of the processes this state directory started that are still alive."""
    out = {}
    for pid_file in sorted(state.glob("*.pid")):
        pid = int(pid_file.read_text())
        if _alive(pid):
            out[pid_file.stem] = pid
    return out


def start(state: Path, name: str, command: Sequence[str], env: dict[str, str]) -> int:
    """Start `command` in the background in its own session; its pid and log in `state`."""
    state.mkdir(parents=True, exist_ok=True)
    if name in running(state):
        raise SystemExit(f"{name} is already running (pid file {_pid_file(state, name)})")
    with log_file(state, name).open("ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _pid_file(state, name).write_text(f"{process.pid}\n")
    return process.pid


def stop(
    state: Path, names: Iterable[str] = (), timeout: float = 10.0, *, kill: bool = False
) -> list[str]:
    """SIGTERM each named process (all when `names` is empty) and its descendants, SIGKILL
    what is left after `timeout`; returns the names stopped. `kill`: SIGKILL at once, as a
    device that loses power (a SuperNode then cannot tell the SuperLink it leaves)."""
    wanted = set(names)
    victims: dict[str, list[int]] = {}
    for pid_file in sorted(state.glob("*.pid")):
        if wanted and pid_file.stem not in wanted:
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            victims[pid_file.stem] = _tree(pid)
        pid_file.unlink()
    pids = [p for tree in victims.values() for p in tree]
    for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(_alive(p) for p in pids):
            break
    return sorted(victims)


def process_env(home: Path) -> dict[str, str]:
    """The environment of a started process: its own FLWR_HOME (apps it installs and its
    state never collide with another process on the same machine) and Flower's quiet mode."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home.resolve())}


# -- commands -------------------------------------------------------------------------------
def superlink_command(
    certs: Path | None, host: str, port: int, node_auth: bool = True
) -> list[str]:
    """flower-superlink with TLS from `certs` and node authentication, or insecure (None)."""
    command = ["flower-superlink", "--host", host, "--port", str(port)]
    if certs is None:
        return [*command, "--insecure"]
    certs = certs.resolve()
    command += [
        "--ssl-ca-certfile", str(certs / "ca.crt"),
        "--ssl-certfile", str(certs / "server.crt"),
        "--ssl-keyfile", str(certs / "server.key"),
    ]  # fmt: skip
    return [*command, "--enable-supernode-auth"] if node_auth else command


def supernode_commands(
    *,
    partition_id: int,
    num_partitions: int,
    superlink: str,
    root_cert: Path | None,
    key: Path | None,
    runtime_port: int,
    isolation: str = "process",
    poll_interval: float = DEFAULT_POLL,
    secret: Path | None = None,
    state_dir: Path | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT,
) -> list[tuple[str, list[str]]]:
    """(name, command) of the processes of SuperNode `partition_id`.

    isolation "process" (the default): the SuperNode with short polls plus a long-lived
    `clientapp`; "subprocess": Flower's stock flower-supernode, a fresh ClientApp process per
    message (the baseline of the overhead benchmark), which has no heartbeat flag.
    `state_dir`: where the ClientApp keeps its worker state on the device, to resume from it
    after a restart. With the long-lived clientapp, runs with `eager-reply` run a round's
    local steps after replying (node config `background-steps`).
    """
    runtime = f"127.0.0.1:{runtime_port}"
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if state_dir is not None:
        node_config += f" state-dir={json.dumps(str(state_dir))}"  # a TOML string
    if isolation == "process":
        # the long-lived clientapp outlives messages: eager replies compute after replying
        node_config += " background-steps=true"
    flags = [
        "--superlink", superlink,
        "--node-config", node_config,
        "--isolation", isolation,
        "--host", "127.0.0.1", "--port", str(runtime_port),
    ]  # fmt: skip
    flags += ["--insecure"] if root_cert is None else ["--root-certificates", str(root_cert)]
    if key is not None:
        flags += ["--auth-supernode-private-key", str(key)]
    name = f"supernode-{partition_id}"
    if isolation == "subprocess":
        return [(name, ["flower-supernode", *flags])]
    auth = [] if secret is None else ["--superexec-auth-secret-file", str(secret)]
    flags += auth
    me = [sys.executable, "-m", "simulations.deploy"]
    node_flags = [
        "--poll-interval",
        str(poll_interval),
        "--heartbeat-interval",
        str(heartbeat_interval),
    ]
    return [
        (name, [*me, "supernode-process", *node_flags, "--", *flags]),
        (
            f"clientapp-{partition_id}",
            [*me, "clientapp", runtime, "--poll-interval", str(poll_interval), *auth],
        ),
    ]


def _cmd_certs(args: argparse.Namespace) -> None:
    for path in write_certificates(args.dir, args.host, args.days):
        print(path)


def _cmd_keys(args: argparse.Namespace) -> None:
    for path in write_node_keys(args.dir, args.nodes):
        print(path)


def _cmd_superlink(args: argparse.Namespace) -> None:
    _tls_or_insecure(args.insecure, args.certs, "superlink", "--certs DIR")
    command = superlink_command(
        None if args.insecure else args.certs, args.host, args.port, not args.no_node_auth
    )
    env = process_env(args.state / "home" / "superlink")
    shim = serverapp_shim(args.state, args.poll_interval, args.pull_timeout)
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    pid = start(args.state, "superlink", command, env)
    print(f"superlink pid {pid}, log {log_file(args.state, 'superlink')}")


def serverapp_shim(
    state: Path, poll_interval: float, pull_timeout: float = DEFAULT_PULL_TIMEOUT
) -> Path:
    """A directory whose `flwr-serverapp` is `serverapp-process`: the SuperLink's SuperExec
    starts the ServerApp by that name from PATH, and this is the one way to give it short
    waits without a second, process-isolated SuperLink setup."""
    directory = (state / "bin").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "flwr-serverapp"
    shim.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m simulations.deploy serverapp-process "
        f'--poll-interval {poll_interval} --pull-timeout {pull_timeout} -- "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def _cmd_supernode(args: argparse.Namespace) -> None:
    _tls_or_insecure(args.insecure, args.root_cert, "supernode", "--root-cert CA")
    if args.heartbeat_interval != DEFAULT_HEARTBEAT and args.isolation == "subprocess":
        raise SystemExit("supernode: --heartbeat-interval needs --isolation process")
    runtime_port = args.runtime_port or DEFAULT_RUNTIME_PORT + args.partition_id
    secret = None
    if args.isolation == "process":
        secret = superexec_secret(args.state, args.partition_id)
    commands = supernode_commands(
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        superlink=args.superlink,
        root_cert=None if args.insecure else args.root_cert.resolve(),
        key=None if args.key is None else args.key.resolve(),
        runtime_port=runtime_port,
        isolation=args.isolation,
        poll_interval=args.poll_interval,
        secret=secret,
        state_dir=None if args.state_dir is None else args.state_dir.resolve(),
        heartbeat_interval=args.heartbeat_interval,
    )
    env = process_env(args.state / "home" / f"supernode-{args.partition_id}")
    for name, command in commands:
        print(f"{name} pid {start(args.state, name, command, env)}")


def _flwr(args: Sequence[str]) -> int:
    """Run the flwr CLI with Flower's quiet settings (and the caller's FLWR_HOME)."""
    return subprocess.run(["flwr", *args], env={**FLOWER_ENV, **os.environ}, check=False).returncode


def _connection(args: argparse.Namespace) -> None:
    _tls_or_insecure(args.insecure, args.root_cert, args.command, "--root-cert CA")
    path = write_connection(args.connection, args.superlink, args.root_cert, args.insecure)
    print(f"connection '{args.connection}' -> {args.superlink} in {path}")


def _cmd_register(args: argparse.Namespace) -> None:
    _connection(args)
    for key in args.public_keys:
        if code := _flwr(["supernode", "register", str(key), args.connection]):
            raise SystemExit(code)


def _cmd_submit(args: argparse.Namespace) -> None:
    _connection(args)
    command = ["run", str(args.app), args.connection]
    command += [arg for config in args.run_config for arg in ("--run-config", config)]
    if args.stream:
        command.append("--stream")
    raise SystemExit(_flwr(command))


def _cmd_logs(args: argparse.Namespace) -> None:
    if not args.name:
        alive = running(args.state)
        for pid_file in sorted(args.state.glob("*.log")):
            pid = alive.get(pid_file.stem)
            print(f"{pid_file.stem:16} {'pid ' + str(pid) if pid else 'stopped'}  {pid_file}")
        return
    path = log_file(args.state, args.name)
    if not path.exists():
        raise SystemExit(f"no log {path}")
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines :]))
    if args.follow:
        with path.open(errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    print(line, end="")
                else:
                    time.sleep(0.2)


def _cmd_stop(args: argparse.Namespace) -> None:
    stopped = stop(args.state, args.names, kill=args.kill)
    print("stopped: " + (", ".join(stopped) or "nothing was running"))


def _cmd_supernode_process(args: argparse.Namespace) -> None:
    """Flower's flower-supernode in this process, its idle waits capped at poll-interval.

    Flower 1.41's SuperNode loop sleeps a literal 3 s after every empty pull, 0.5 s between
    checks for the ClientApp's reply, and backs off 1 s when it asks for a message's content
    before the server has finished pushing it (flwr.supernode.start_client_internal); each
    adds seconds to a round. Only those waits change, and the heartbeat interval, which
    Flower hard-codes to 30 s: the SuperLink reports the node unavailable 2 intervals after
    its last heartbeat, so a shorter one finds a dead device sooner.
    """
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    # the interval the SuperNode reports, and the one its heartbeat thread sends at
    connection.HEARTBEAT_DEFAULT_INTERVAL = args.heartbeat_interval
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = args.heartbeat_interval
    loop.time = _CappedSleep(args.poll_interval)  # type: ignore[assignment]
    loop.pull_objects = functools.partial(loop.pull_objects, **_backoff(args.poll_interval))
    sys.argv = ["flower-supernode", *args.flags]
    flower_supernode()


def _cmd_serverapp_process(args: argparse.Namespace) -> None:
    """Flower's flwr-serverapp in this process, its Grid retrying a reply whose content is
    still arriving every poll-interval rather than after 1 s (then 2 s, ...): a strategy that
    pulls every few milliseconds meets such replies in most rounds. A reply whose content
    has not all arrived after pull-timeout becomes an error reply: its SuperNode died while
    pushing it, and Flower would block the whole ServerApp for up to 500 retries (over an
    hour) before giving up."""
    import flwr.superlink.grid.http_grid as grid
    from flwr.superlink.cli import flwr_serverapp

    grid.pull_objects = functools.partial(
        grid.pull_objects, **_backoff(args.poll_interval), max_time=args.pull_timeout
    )
    sys.argv = ["flwr-serverapp", *args.flags]
    flwr_serverapp()


def _backoff(poll_interval: float) -> dict[str, float]:
    """Retry waits for a message's content that is still arriving (Flower's: 1 s, doubling)."""
    return {"initial_backoff": poll_interval, "backoff_cap": 1.0}


class _CappedSleep:
    """The time module, but sleep() waits at most `cap` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _cmd_clientapp(args: argparse.Namespace) -> None:
    secret = args.superexec_auth_secret_file
    serve_clientapp(
        args.runtime_api_address,
        args.poll_interval,
        None if secret is None else secret.read_bytes(),
        args.token,
    )


# -- the long-lived ClientApp process ---------------------------------------------------------
def serve_clientapp(
    address: str, poll_interval: float, secret: bytes | None, first_token: str | None = None
) -> None:
    """Take the SuperNode's ClientApp tasks off its Runtime API and run each in this process.

    Flower's SuperExec would start one `flwr-clientapp` per task; this loop does what that
    process does (pull the task's message and context, run the ClientApp, push the reply and
    the new context) for every task, so torch is imported once and the app's own in-process
    cache (clients.client_app keeps workers alive between rounds) stays warm. Apps are
    imported from the FAB as Flower installs it; a task of a different FAB re-executes this
    process, because Python cannot unload the first app's modules. Flower's own task input
    pull is used, its retries for content the SuperNode is still fetching shortened to
    poll-interval (rather than 1 s, doubling): a long-lived ClientApp asks for it at once.
    """
    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"}
            )
        )
    tasks = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )
    runtime.pull_and_inflate_object_from_tree = functools.partial(  # type: ignore[assignment]
        runtime.pull_and_inflate_object_from_tree, **_backoff(poll_interval)
    )
    apps: dict[str, Any] = {}
    if first_token is not None:
        _run_task(address, first_token, apps)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    while True:
        reply = tasks.AcquireTask(request)
        if reply.HasField("task") and reply.token:
            if apps and reply.task.fab_hash not in apps:
                tasks.close()
                argv = [a for a in sys.argv if a != "--token" and a != first_token]
                os.execv(sys.executable, [sys.executable, *argv, "--token", reply.token])
            try:
                _run_task(address, reply.token, apps)
            except Exception as ex:  # the task failed; the SuperNode expires it, this serves on
                print(f"task failed: {ex!r}", file=sys.stderr, flush=True)
        else:
            time.sleep(poll_interval)


def _run_task(address: str, token: str, apps: dict[str, Any]) -> None:
    """One task, as flwr.supernode.runtime.run_clientapp runs it, minus the process exit."""
    from flwr.app import Error, Message
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )

    def heartbeat() -> bool:
        # Flower's task heartbeat raises SIGINT when the task is gone, which would end this
        # long-lived process; here the task just stops being served.
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except Exception:
            return False

    beats = HeartbeatSender(heartbeat)
    beats.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, run, fab = pull_task_input(client)
        if fab.hash_str not in apps:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = apps[fab.hash_str](message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:
        details = f"{type(ex)}:<'{ex}'>"
        print(f"ClientApp raised: {details}", file=sys.stderr, flush=True)
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)  # fmt: skip
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, status, details)
        finally:
            beats.stop()
            client.close()


# -- argument parsing -----------------------------------------------------------------------
def _state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        help=f"directory of pid files, logs and process homes (default {DEFAULT_STATE})",
    )


def _heartbeat(parser: argparse.ArgumentParser) -> None:
    """--heartbeat-interval, refused here outside the range the SuperLink accepts (it
    would refuse the SuperNode's activation)."""

    def seconds(text: str) -> float:
        value = float(text)
        if not HEARTBEAT_RANGE[0] <= value <= HEARTBEAT_RANGE[1]:
            raise argparse.ArgumentTypeError(f"{value} is not in {list(HEARTBEAT_RANGE)}")
        return value

    parser.add_argument(
        "--heartbeat-interval",
        type=seconds,
        default=DEFAULT_HEARTBEAT,
        help="seconds between SuperNode heartbeats; the SuperLink reports a node that missed "
        f"2 intervals unavailable (default {DEFAULT_HEARTBEAT:g}, at least {HEARTBEAT_RANGE[0]:g})",
    )


def _poll(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL,
        help=f"seconds between polls of a waiting process (default {DEFAULT_POLL:g})",
    )


def _pull_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pull-timeout",
        type=float,
        default=DEFAULT_PULL_TIMEOUT,
        help="seconds the ServerApp waits for the content of a reply before taking its "
        f"worker as failed (a SuperNode that died mid-push; default {DEFAULT_PULL_TIMEOUT:g})",
    )


def _superlink(parser: argparse.ArgumentParser) -> None:
    """How a SuperNode or the CLI reaches the SuperLink: its address, and TLS or not."""
    parser.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    parser.add_argument("--root-cert", type=Path, help="CA certificate (certs DIR/ca.crt)")
    parser.add_argument("--insecure", action="store_true", help="no TLS (testing only)")


def _link(parser: argparse.ArgumentParser) -> None:
    _superlink(parser)
    parser.add_argument("--connection", default=DEFAULT_CONNECTION, help="name in config.toml")


def _tls_or_insecure(insecure: bool, tls: Path | None, command: str, flag: str) -> None:
    """Exactly one of TLS (`flag`) and --insecure, so that no link is insecure by accident."""
    if insecure == (tls is not None):
        raise SystemExit(f"{command}: give {flag} (TLS), or --insecure to run without TLS")


def add_commands(subparsers: Any) -> None:
    """Add the deploy subcommands to `subparsers` (of `fedcoop deploy` or this module)."""
    p = subparsers.add_parser("certs", help="CA and SuperLink TLS certificate")
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--host",
        nargs="+",
        default=["localhost", "127.0.0.1"],
        help="every name or IP SuperNodes and the CLI use to reach the SuperLink",
    )
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_cmd_certs)

    p = subparsers.add_parser("keys", help="SuperNode authentication key pairs")
    p.add_argument("dir", type=Path)
    p.add_argument("--nodes", type=int, required=True)
    p.set_defaults(func=_cmd_keys)

    p = subparsers.add_parser("superlink", help="start the SuperLink (TLS and node auth)")
    _state(p)
    p.add_argument("--certs", type=Path, help="directory written by `certs`")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node auth (testing)")
    p.add_argument("--no-node-auth", action="store_true", help="TLS without node auth")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    _poll(p)
    _pull_timeout(p)
    p.set_defaults(func=_cmd_superlink)

    p = subparsers.add_parser("supernode", help="start SuperNode <partition-id> on this device")
    _state(p)
    p.add_argument("--partition-id", type=int, required=True)
    p.add_argument("--num-partitions", type=int, required=True)
    _superlink(p)
    p.add_argument("--key", type=Path, help="auth private key (keys DIR/supernode-<i>.key)")
    p.add_argument(
        "--runtime-port",
        type=int,
        help=f"local Runtime API port (default {DEFAULT_RUNTIME_PORT} + partition id)",
    )
    p.add_argument(
        "--isolation",
        choices=["process", "subprocess"],
        default="process",
        help="process: long-lived ClientApp (default); subprocess: Flower's, one per message",
    )
    _poll(p)
    _heartbeat(p)
    p.add_argument(
        "--state-dir",
        type=Path,
        help="keep the worker's state here after every round, to resume from it after a restart",
    )
    p.set_defaults(func=_cmd_supernode)

    p = subparsers.add_parser("register", help="register SuperNode public keys")
    _link(p)
    p.add_argument("public_keys", type=Path, nargs="+")
    p.set_defaults(func=_cmd_register)

    p = subparsers.add_parser("submit", help="flwr run the app on the SuperLink")
    _link(p)
    p.add_argument("app", type=Path, nargs="?", default=Path("."))
    p.add_argument("--run-config", action="append", default=[], help="as for flwr run")
    p.add_argument("--stream", action="store_true", help="stream the run's log until it ends")
    p.set_defaults(func=_cmd_submit)

    p = subparsers.add_parser("logs", help="list started processes, or show one's log")
    _state(p)
    p.add_argument("name", nargs="?", help="superlink, supernode-<i> or clientapp-<i>")
    p.add_argument("--lines", type=int, default=40)
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(func=_cmd_logs)

    p = subparsers.add_parser("stop", help="stop started processes (all, or those named)")
    _state(p)
    p.add_argument("names", nargs="*")
    p.add_argument("--kill", action="store_true", help="SIGKILL at once (emulate a crash)")
    p.set_defaults(func=_cmd_stop)

    p = subparsers.add_parser(
        "supernode-process", help="(started by supernode) Flower's SuperNode, short polls"
    )
    _poll(p)
    _heartbeat(p)
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then flower-supernode flags")
    p.set_defaults(func=_cmd_supernode_process)

    p = subparsers.add_parser(
        "serverapp-process", help="(started by superlink) Flower's ServerApp, short retries"
    )
    _poll(p)
    _pull_timeout(p)
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then flwr-serverapp flags")
    p.set_defaults(func=_cmd_serverapp_process)

    p = subparsers.add_parser(
        "clientapp", help="(started by supernode) long-lived ClientApp for one SuperNode"
    )
    p.add_argument("runtime_api_address", help="the SuperNode's Runtime API HOST:PORT")
    _poll(p)
    p.add_argument("--superexec-auth-secret-file", type=Path)
    p.add_argument("--token", help="serve this task first (after a restart for a new app)")
    p.set_defaults(func=_cmd_clientapp)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedcoop deploy", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if getattr(args, "flags", None) and args.flags[0] == "--":
        args.flags = args.flags[1:]
    args.func(args)


if __name__ == "__main__":
    main()
