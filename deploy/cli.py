"""The deploy commands, for `python -m deploy <command>` and `fedcoop deploy <command>`: each
parses its flags and calls the module that does the work."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import deploy
from deploy.clientapp_server import serve_clientapp
from deploy.commands import (
    DEFAULT_HEARTBEAT,
    DEFAULT_IDLE_POLL,
    DEFAULT_POLL,
    DEFAULT_PULL_TIMEOUT,
    SUPERLINK_TLS,
    serverapp_shim,
    superlink_command,
    supernode_commands,
)
from deploy.credentials import superexec_secret, write_certificates, write_node_keys
from deploy.flower_patches import (
    drop_messages_of_stopped_runs,
    omit_installed_app_content,
    shorten_serverapp_retries,
    shorten_supernode_waits,
    skip_middleware_off_its_paths,
)
from deploy.flwr_cli import DEFAULT_CONNECTION, run_flwr, write_connection
from deploy.processes import log_file, process_env, running, start, stop

DEFAULT_STATE = Path(".fedcoop-deploy")
DEFAULT_PORT = 9093
DEFAULT_RUNTIME_PORT = 9094
#: the heartbeat intervals the SuperLink accepts (it refuses a SuperNode outside them)
HEARTBEAT_RANGE = (10.0, 1800.0)


# -- the commands -----------------------------------------------------------------------------
def _cmd_certs(args: argparse.Namespace) -> None:
    for path in write_certificates(args.dir, args.host, args.days):
        print(path)


def _cmd_keys(args: argparse.Namespace) -> None:
    for path in write_node_keys(args.dir, args.nodes):
        print(path)


def _cmd_superlink(args: argparse.Namespace) -> None:
    _tls_or_insecure(args.insecure, args.certs, "superlink", "--certs DIR")
    if not args.insecure:
        missing = [f for f in SUPERLINK_TLS.values() if not (args.certs / f).is_file()]
        if missing:
            raise SystemExit(
                f"superlink: --certs {args.certs} has no {', '.join(missing)} "
                f"(write them with `deploy certs {args.certs}`)"
            )
    command = superlink_command(
        None if args.insecure else args.certs,
        args.host,
        args.port,
        not args.no_node_auth,
        args.database,
    )
    env = process_env(args.state / "home" / "superlink")
    shim = serverapp_shim(args.state, args.poll_interval, args.pull_timeout, args.idle_poll)
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    pid = start(args.state, "superlink", command, env)
    print(f"superlink pid {pid}, log {log_file(args.state, 'superlink')}")


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
        idle_poll=args.idle_poll,
        secret=secret,
        state_dir=None if args.state_dir is None else args.state_dir.resolve(),
        heartbeat_interval=args.heartbeat_interval,
    )
    env = process_env(args.state / "home" / f"supernode-{args.partition_id}")
    for name, command in commands:
        print(f"{name} pid {start(args.state, name, command, env)}")


def _connection(args: argparse.Namespace) -> None:
    _tls_or_insecure(args.insecure, args.root_cert, args.command, "--root-cert CA")
    path = write_connection(args.connection, args.superlink, args.root_cert, args.insecure)
    print(f"connection '{args.connection}' -> {args.superlink} in {path}")


def _cmd_register(args: argparse.Namespace) -> None:
    _connection(args)
    for key in args.public_keys:
        if code := run_flwr(["supernode", "register", str(key), args.connection]):
            raise SystemExit(code)


def _cmd_submit(args: argparse.Namespace) -> None:
    _connection(args)
    command = ["run", str(args.app), args.connection]
    command += [arg for config in args.run_config for arg in ("--run-config", config)]
    if args.stream:
        command.append("--stream")
    raise SystemExit(run_flwr(command))


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
    """Flower's flower-supernode in this process: it polls every poll-interval after a
    message and backs off to idle-poll while none comes, wakes the ClientApp on wake-port
    when a task waits and then hands it installed apps without their content, and its
    heartbeat interval is set, and a message whose run stops while it is pulled is dropped
    (flower_patches)."""
    shorten_supernode_waits(
        args.poll_interval, args.heartbeat_interval, args.idle_poll, args.wake_port
    )
    drop_messages_of_stopped_runs()
    skip_middleware_off_its_paths("flwr.supernode.main")
    if args.wake_port is not None:  # its ClientApp is the helper's: it loads installed apps
        omit_installed_app_content()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args.flags]
    flower_supernode()


def _cmd_superlink_process(args: argparse.Namespace) -> None:
    """Flower's flower-superlink in this process, each of its middleware layers run only for
    the API paths it acts on, and its event log layers only with --enable-event-log
    (flower_patches)."""
    skip_middleware_off_its_paths(
        "flwr.superlink.main", event_log="--enable-event-log" in args.flags
    )
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *args.flags]
    flower_superlink()


def _cmd_serverapp_process(args: argparse.Namespace) -> None:
    """Flower's flwr-serverapp in this process, its Grid retrying a reply whose content is
    still arriving every poll-interval rather than after 1 s (then 2 s, ...): a strategy that
    pulls every few milliseconds meets such replies in most rounds. A reply whose content
    has not all arrived after pull-timeout becomes an error reply: its SuperNode died while
    pushing it, and Flower would block the whole ServerApp for up to 500 retries (over an
    hour) before giving up. Pulls that bring nothing back off to idle-poll."""
    shorten_serverapp_retries(args.poll_interval, args.pull_timeout, args.idle_poll)
    from flwr.superlink.cli import flwr_serverapp

    sys.argv = ["flwr-serverapp", *args.flags]
    flwr_serverapp()


def _cmd_clientapp(args: argparse.Namespace) -> None:
    secret = args.superexec_auth_secret_file
    serve_clientapp(
        args.runtime_api_address,
        args.poll_interval,
        None if secret is None else secret.read_bytes(),
        args.token,
        idle_poll=args.idle_poll,
        wake_port=args.wake_port,
    )


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
        help="seconds between polls of a process that expects a message soon "
        f"(default {DEFAULT_POLL:g})",
    )
    parser.add_argument(
        "--idle-poll",
        type=float,
        default=DEFAULT_IDLE_POLL,
        help="the most seconds a waiting process backs off to between polls while nothing "
        f"comes (default {DEFAULT_IDLE_POLL:g})",
    )


def _wake_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wake-port",
        type=int,
        help="UDP port on 127.0.0.1 where the SuperNode wakes its ClientApp for a task",
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
    """Add the deploy subcommands to `subparsers` (of `fedcoop deploy` or `python -m deploy`)."""
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
    p.add_argument(
        "--database",
        type=Path,
        help="SQLite file of the SuperLink's state (registered nodes, runs, messages), kept "
        "across restarts (default: in memory, lost when it stops)",
    )
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
    _wake_port(p)
    _heartbeat(p)
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then flower-supernode flags")
    p.set_defaults(func=_cmd_supernode_process)

    p = subparsers.add_parser(
        "superlink-process", help="(started by superlink) Flower's SuperLink, lighter requests"
    )
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then flower-superlink flags")
    p.set_defaults(func=_cmd_superlink_process)

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
    _wake_port(p)
    p.add_argument("--superexec-auth-secret-file", type=Path)
    p.add_argument("--token", help="serve this task first (after a restart for a new app)")
    p.set_defaults(func=_cmd_clientapp)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedcoop deploy", description=deploy.__doc__.splitlines()[0]
    )
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if getattr(args, "flags", None) and args.flags[0] == "--":
        args.flags = args.flags[1:]
    args.func(args)
