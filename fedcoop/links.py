"""Network links of the virtual clock: a one-way latency and a bandwidth, the presets, and
the parser of the `link` config key.

A module of its own, below both users: `fedcoop.config` checks the `link` key with
`parse_link` at start-up, and `fedcoop.clock` (which reads `RunConfig`) times transfers with
`Link`; with the link in either of them, they would import each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fedcoop.errors import ConfigError

_BITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_SECONDS = {"ms": 1e-3, "s": 1.0}
_CUSTOM_LINK = re.compile(
    r"^\s*(?P<lat>\d+(?:\.\d*)?)\s*(?P<lat_unit>ms|s)\s*/"
    r"\s*(?P<bw>\d+(?:\.\d*)?)\s*(?P<bw_unit>kbit|mbit|gbit)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Link:
    """One link: one-way latency in seconds, bandwidth in bytes per second."""

    latency: float
    bandwidth: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ConfigError("link latency", self.latency, "seconds >= 0")
        if not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ConfigError("link bandwidth", self.bandwidth, "bytes per second > 0")

    def transfer(self, nbytes: int) -> float:
        """Seconds to move `nbytes` over this link: latency + nbytes / bandwidth."""
        return self.latency + nbytes / self.bandwidth

    @classmethod
    def of(cls, latency_ms: float, mbit: float) -> Link:
        """A link from the units people quote: milliseconds and Mbit/s."""
        return cls(latency=latency_ms * 1e-3, bandwidth=mbit * 1e6 / 8)


#: Typical one-way latencies and bandwidths, round numbers rather than measurements:
#: datacenter Ethernet (the overlap paper's cluster is 40 Gbit/s; it names 10 Gbit/s as the
#: slow case) with ~0.1 ms intra-datacenter latency; Wi-Fi as a home 802.11ac link plus
#: broadband to a cloud server (tens of ms, ~50 Mbit/s); LTE as mobile-network reports give
#: it (~50 ms, ~20 Mbit/s); congested wireless as a crowded cell or shared hotspot
#: (~200 ms, ~1 Mbit/s), the regime of cross-device federated learning.
LINK_PRESETS: dict[str, Link] = {
    "datacenter-40g": Link.of(0.1, 40_000),
    "datacenter-10g": Link.of(0.1, 10_000),
    "wifi": Link.of(20, 50),
    "lte": Link.of(50, 20),
    "congested-wireless": Link.of(200, 1),
}


def parse_link(text: str) -> Link:
    """A preset name, or "<latency><ms|s>/<bandwidth><kbit|mbit|gbit>" like "50ms/20mbit"."""
    key = text.strip().lower() if isinstance(text, str) else ""
    if key in LINK_PRESETS:
        return LINK_PRESETS[key]
    match = _CUSTOM_LINK.match(key)
    if match is None or float(match["bw"]) == 0:
        raise ConfigError("link", text, f"{', '.join(LINK_PRESETS)} or '<ms>ms/<mbit>mbit'")
    latency = float(match["lat"]) * _SECONDS[match["lat_unit"]]
    return Link(latency=latency, bandwidth=float(match["bw"]) * _BITS[match["bw_unit"]] / 8)
