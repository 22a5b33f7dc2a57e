"""The flwr CLI against a deployment's SuperLink: its connection in $FLWR_HOME/config.toml,
and `flwr` commands run with Flower's quiet settings."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from deploy.processes import FLOWER_ENV

#: the name of the SuperLink connection `register` and `submit` write and use
DEFAULT_CONNECTION = "fedcoop"


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


def run_flwr(args: Sequence[str]) -> int:
    """Run the flwr CLI with Flower's quiet settings (and the caller's FLWR_HOME)."""
    return subprocess.run(["flwr", *args], env={**FLOWER_ENV, **os.environ}, check=False).returncode
