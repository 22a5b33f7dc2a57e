"""Flower 1.41 waits shortened at run time, for Flower 1.41 only.

Flower 1.41 has no option for any of them: `flower-supernode` has flags for its connection
retries but none for its idle waits or heartbeat, `flwr-serverapp` only takes addresses,
the SuperNode loop (flwr.supernode.start_client_internal) sleeps a literal 3 s and 0.5 s,
the heartbeat interval is the constant flwr.common.constant.HEARTBEAT_DEFAULT_INTERVAL, and
the retry waits for an object still arriving are the defaults of `pull_objects` and
`pull_and_inflate_object_from_tree` (PULL_INITIAL_BACKOFF and friends in
flwr.supercore.constant, read from no environment variable). So each patch replaces the
attribute a Flower module looks these up by, in the one process that calls it, and refuses
on a Flower other than 1.41.x, whose internals it was not written for.
"""

from __future__ import annotations

import functools
import time
from typing import Any

#: the Flower release (major.minor) whose internals these patches were written against
SUPPORTED_FLOWER = "1.41"


class UnsupportedFlowerError(RuntimeError):
    """The installed Flower is not the one the patches were written for."""


def check_flower_version() -> None:
    """Raise UnsupportedFlowerError unless the installed Flower is 1.41.x."""
    import flwr

    installed = flwr.__version__
    if installed.split(".")[:2] != SUPPORTED_FLOWER.split("."):
        raise UnsupportedFlowerError(
            f"deploy.flower_patches shortens Flower internals as Flower {SUPPORTED_FLOWER}.x "
            f"has them, but flwr {installed} is installed: install flwr=={SUPPORTED_FLOWER}.*, "
            "or check each patch against the installed Flower's source first"
        )


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


def shorten_supernode_waits(poll_interval: float, heartbeat_interval: float) -> None:
    """The SuperNode's idle waits capped at `poll_interval`, and its heartbeat interval set.

    Flower 1.41's SuperNode loop sleeps a literal 3 s after every empty pull, 0.5 s between
    checks for the ClientApp's reply, and backs off 1 s when it asks for a message's content
    before the server has finished pushing it (flwr.supernode.start_client_internal); each
    adds seconds to a round. The heartbeat interval, which Flower hard-codes to 30 s, is the
    one the SuperNode reports and the one its heartbeat thread sends at: the SuperLink
    reports the node unavailable 2 intervals after its last heartbeat, so a shorter one finds
    a dead device sooner.
    """
    check_flower_version()
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop

    connection.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval  # type: ignore[assignment]
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval  # type: ignore[assignment]
    loop.time = _CappedSleep(poll_interval)  # type: ignore[assignment]
    loop.pull_objects = functools.partial(loop.pull_objects, **_backoff(poll_interval))


def shorten_serverapp_retries(poll_interval: float, pull_timeout: float) -> None:
    """The ServerApp's Grid retries a reply whose content is still arriving every
    `poll_interval` rather than after 1 s (then 2 s, ...), and gives up after `pull_timeout`
    (Flower's limits: 500 tries, 7200 s); the reply then becomes an error reply."""
    check_flower_version()
    import flwr.superlink.grid.http_grid as grid

    grid.pull_objects = functools.partial(
        grid.pull_objects, **_backoff(poll_interval), max_time=pull_timeout
    )


def shorten_task_input_retries(poll_interval: float) -> None:
    """Flower's ClientApp task input pull (flwr.supernode.runtime.run_clientapp) retries
    content the SuperNode is still fetching every `poll_interval` rather than after 1 s,
    doubling. Call it once per process: each call wraps the previous one."""
    check_flower_version()
    import flwr.supernode.runtime.run_clientapp as runtime

    runtime.pull_and_inflate_object_from_tree = functools.partial(  # type: ignore[assignment]
        runtime.pull_and_inflate_object_from_tree, **_backoff(poll_interval)
    )
