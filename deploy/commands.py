"""Command lines of a deployment's processes: the SuperLink, each SuperNode (Flower's, or the
helper's short-poll SuperNode plus its long-lived ClientApp) and the ServerApp the SuperLink
starts."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

#: seconds between polls of a process that expects a message soon (each poll costs about a
#: millisecond of CPU, and the SuperLink answers those of every device)
DEFAULT_POLL = 0.05
#: the most seconds a waiting process backs off to between polls while nothing comes
DEFAULT_IDLE_POLL = 1.0
#: the heartbeat interval a SuperNode reports (Flower's default; the SuperLink accepts 10 to
#: 1800 s and marks a node offline after 2 intervals without a heartbeat)
DEFAULT_HEARTBEAT = 30.0
#: seconds the ServerApp waits for the content of a reply that has arrived
DEFAULT_PULL_TIMEOUT = 300.0


def helper_command(*args: str) -> list[str]:
    """This helper (`python -m deploy`) with `args`, in this Python."""
    return [sys.executable, "-m", "deploy", *args]


def helper_superlink(*flags: str) -> list[str]:
    """Flower's SuperLink with `flags`, run by this helper (`superlink-process`)."""
    return helper_command("superlink-process", "--", *flags)


#: flower-superlink's TLS flags and the file of a `certs` directory each takes
SUPERLINK_TLS = {
    "--ssl-ca-certfile": "ca.crt",
    "--ssl-certfile": "server.crt",
    "--ssl-keyfile": "server.key",
}


def superlink_command(
    certs: Path | None,
    host: str,
    port: int,
    node_auth: bool = True,
    database: Path | None = None,
    stock: bool = False,
) -> list[str]:
    """flower-superlink with TLS from `certs` and node authentication, or insecure (None);
    its state (registered nodes, runs, messages) in the SQLite file `database`, so that it
    outlives a restart, or in memory (None, Flower's default). Run as the helper's
    `superlink-process` (its middleware only on the paths it acts on), or as it is
    (`stock`, the overhead benchmark's baseline)."""
    command = ["--host", host, "--port", str(port)]
    command = ["flower-superlink", *command] if stock else helper_superlink(*command)
    if database is not None:
        command += ["--database", str(database.resolve())]
    if certs is None:
        return [*command, "--insecure"]
    certs = certs.resolve()
    command += [arg for flag, name in SUPERLINK_TLS.items() for arg in (flag, str(certs / name))]
    return [*command, "--enable-supernode-auth"] if node_auth else command


def serverapp_shim(
    state: Path,
    poll_interval: float,
    pull_timeout: float = DEFAULT_PULL_TIMEOUT,
    idle_poll: float = DEFAULT_IDLE_POLL,
) -> Path:
    """A directory whose `flwr-serverapp` is `serverapp-process`: the SuperLink's SuperExec
    starts the ServerApp by that name from PATH, and this is the one way to give it short
    waits without a second, process-isolated SuperLink setup."""
    directory = (state / "bin").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "flwr-serverapp"
    command = helper_command(
        "serverapp-process", "--poll-interval", str(poll_interval),
        "--idle-poll", str(idle_poll), "--pull-timeout", str(pull_timeout),
    )  # fmt: skip
    shim.write_text(f'#!/bin/sh\nexec {shlex.join(command)} -- "$@"\n')
    shim.chmod(0o755)
    return directory


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
    idle_poll: float = DEFAULT_IDLE_POLL,
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
    local steps after replying (node config `background-steps`); the SuperNode wakes it on
    UDP port `runtime_port` when a task is waiting, and both back off to `idle_poll`
    between polls while nothing comes.
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
    polls = ["--poll-interval", str(poll_interval), "--idle-poll", str(idle_poll)]
    polls += ["--wake-port", str(runtime_port)]
    node_flags = [*polls, "--heartbeat-interval", str(heartbeat_interval)]
    return [
        (name, helper_command("supernode-process", *node_flags, "--", *flags)),
        (f"clientapp-{partition_id}", helper_command("clientapp", runtime, *polls, *auth)),
    ]
