"""Background processes of a deployment: started in their own session with a pid file and a
log in a state directory, found again by pid, and stopped with all their descendants."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Flower's own defaults for processes this helper starts: no `uv sync`, no calls home.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


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


# -- processes, by pid ------------------------------------------------------------------------
def _pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def log_file(state: Path, name: str) -> Path:
    """Where the output of the process `name` started in `state` goes."""
    return state / f"{name}.log"


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
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


def process_tree(pid: int) -> list[int]:
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
        if alive(pid):
            out[pid_file.stem] = pid
    return out


# -- start and stop ---------------------------------------------------------------------------
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
        if alive(pid):
            victims[pid_file.stem] = process_tree(pid)
        pid_file.unlink()
    pids = [p for tree in victims.values() for p in tree]
    for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(alive(p) for p in pids):
            break
    return sorted(victims)


def process_env(home: Path) -> dict[str, str]:
    """The environment of a started process: its own FLWR_HOME (apps it installs and its
    state never collide with another process on the same machine) and Flower's quiet mode."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home.resolve())}
