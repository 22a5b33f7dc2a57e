"""What each process of a loopback deployment costs: its role (SuperLink, ServerApp,
SuperNode, ClientApp), CPU seconds (/proc/<pid>/stat) and peak RSS (VmHWM), sampled in a
thread so that a process that exits (the ServerApp) is still counted."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from deploy import processes

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
#: the roles of a deployment's processes, in table order
ROLES = ("superlink", "serverapp", "supernode", "clientapp")


def _role(name: str, pid: int) -> str:
    """superlink (and its SuperExec), serverapp, supernode or clientapp."""
    if name != "superlink":
        return name.rpartition("-")[0]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "superlink"
    return "serverapp" if b"serverapp" in cmdline else "superlink"


def _cpu_and_peak(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, peak RSS in kB) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    peak = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0
    )
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK, peak


class Sampler:
    """Every process of a deployment, sampled in a thread: each pid's role, its latest CPU
    seconds and its peak RSS, kept after the process exits (the ServerApp does)."""

    def __init__(self, state: Path, interval: float = 0.5) -> None:
        self.state, self.interval = state, interval
        self.seen: dict[int, tuple[str, float, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sample()
        self._thread.start()

    def sample(self) -> None:
        found = {
            pid: _role(name, pid)
            for name, root in processes.running(self.state).items()
            for pid in processes.process_tree(root)
        }
        found.update(dict.fromkeys(self._serverapps(), "serverapp"))
        for pid, role in found.items():
            if (figures := _cpu_and_peak(pid)) is not None:
                self.seen[pid] = (role, *figures)

    def _serverapps(self) -> list[int]:
        """The ServerApp even where the SuperExec's start left it outside the SuperLink's
        process tree: the process running `serverapp-process` with this deployment's
        FLWR_HOME (under the state directory)."""
        home = f"FLWR_HOME={(self.state / 'home' / 'superlink').resolve()}".encode()
        out = []
        for entry in Path("/proc").iterdir():
            try:
                if (
                    entry.name.isdigit()
                    and b"serverapp-process" in (entry / "cmdline").read_bytes()
                ) and home in (entry / "environ").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
            except OSError:
                continue
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def cpu(self) -> dict[int, tuple[str, float]]:
        return {pid: (role, cpu) for pid, (role, cpu, _) in self.seen.items()}

    def peak_rss(self) -> dict[str, int]:
        """The largest peak RSS (kB) of a process of each role."""
        out: dict[str, int] = {}
        for role, _, peak in self.seen.values():
            out[role] = max(out.get(role, 0), peak)
        return out


def cpu_share(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float
) -> dict[str, tuple[float, float, float]]:
    """Per role: (mean, max, sum) over its processes of the % of one core used in between."""
    shares: dict[str, list[float]] = {}
    for pid, (role, cpu) in after.items():
        used = cpu - before.get(pid, (role, 0.0))[1]
        shares.setdefault(role, []).append(100 * used / seconds)
    return {role: (sum(v) / len(v), max(v), sum(v)) for role, v in shares.items()}
