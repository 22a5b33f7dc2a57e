"""Device tables with links (`fedcoop.devices`): each worker's own bandwidth and latency on
the virtual clock, and the refusals that name the file, row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcoop import devices
from fedcoop.errors import ConfigError, RunFailed
from fedcoop.links import Link, parse_link
from tests.conftest import least_squares_config, run_in_process, x0_of

#: the config's link, in the table's units: 0.1 ms and 10,000 Mbit/s (datacenter-10g)
SAME = "10000,0.1"


def _table(
    tmp_path: Path, rows: list[str], header: str = "worker,speed,bandwidth-mbit,latency-ms"
) -> str:
    path = tmp_path / "devices.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_a_table_with_links_gives_each_worker_its_own(tmp_path: Path) -> None:
    table = _table(tmp_path, ["0,1,1,200", f"1,2,{SAME}"])
    assert devices.links(table, 2) == (Link.of(200, 1), Link.of(0.1, 10_000))
    np.testing.assert_array_equal(devices.speeds(table, 2, seed=0), [1.0, 2.0])
    assert devices.links(_table(tmp_path, ["0,1", "1,2"], "worker,speed"), 2) is None
    assert devices.links("lognormal:0.5", 2) is None


@pytest.mark.parametrize(
    ("rows", "header", "where"),
    [
        (["0,1,0,10", "1,1,1,10"], None, "row 2, column bandwidth-mbit"),
        (["0,1,1,10", "1,1,1,-5"], None, "row 3, column latency-ms"),
        (["0,1,1,ten", "1,1,1,10"], None, "row 2, column latency-ms"),
        (["0,1,1", "1,1,1"], "worker,speed,bandwidth-mbit", "row 1"),
    ],
)
def test_a_bad_link_entry_is_refused_naming_its_row_and_column(
    tmp_path: Path, rows: list[str], header: str | None, where: str
) -> None:
    table = _table(tmp_path, rows, *([header] if header else []))
    with pytest.raises(ConfigError) as caught:
        devices.links(table, 2)
    assert table in caught.value.parameter and where in caught.value.parameter


def test_workers_on_the_configs_own_link_keep_the_clock_as_it_was(tmp_path: Path) -> None:
    """A table that puts every worker on the config's link changes no virtual time (its
    hop is never the slower one); one worker on a 1 Mbit/s, 200 ms link delays every
    round by at least its own upload of the model."""
    config = least_squares_config(algorithm="fedavg", link="datacenter-10g", step_time=0.05)
    m = config.num_clients
    same = _table(tmp_path, [f"{i},1,{SAME}" for i in range(m)])
    plain, _ = run_in_process(config)
    tabled, _ = run_in_process(config.replace(device_speeds=same))
    assert [r["virtual-time"] for r in tabled.rounds] == [r["virtual-time"] for r in plain.rounds]
    slow = _table(tmp_path, ["0,1,1,200", *[f"{i},1,{SAME}" for i in range(1, m)]])
    slowed, _ = run_in_process(config.replace(device_speeds=slow))
    model_bytes = x0_of(config).nbytes  # what the clock moves per model
    upload = Link.of(200, 1).transfer(model_bytes) - parse_link("datacenter-10g").transfer(
        m * model_bytes
    )
    for a, b in zip(slowed.rounds, plain.rounds, strict=True):
        assert a["virtual-time"] - b["virtual-time"] >= upload * a["round"] * 0.99


def test_a_worker_outside_its_available_windows_is_not_sampled(tmp_path: Path) -> None:
    """Round r samples among the workers available when round r - 2 settled (virtual
    time): worker 0, available for the first 0.2 s only, trains rounds 1-3 (rounds 1 and 2
    read time 0, round 3 the end of round 1, about 0.15 s) and none after."""
    config = least_squares_config(algorithm="fedavg", step_time=0.05, num_rounds=5)
    rows = ["0,1,0-0.2", *[f"{i},1," for i in range(1, config.num_clients)]]
    table = _table(tmp_path, rows, "worker,speed,available")
    result, _ = run_in_process(config.replace(device_speeds=table))
    times = [r["virtual-time"] for r in result.rounds]
    assert times[0] < 0.2 < times[1]
    assert [r["participants"] for r in result.rounds] == [5, 5, 5, 4, 4]


def test_no_available_worker_stops_the_run_saying_so(tmp_path: Path) -> None:
    config = least_squares_config(algorithm="fedavg", step_time=0.05, num_rounds=4)
    rows = [f"{i},1,0-0.1" for i in range(config.num_clients)]
    table = _table(tmp_path, rows, "worker,speed,available")
    with pytest.raises(RunFailed, match="no worker is available"):
        run_in_process(config.replace(device_speeds=table))


@pytest.mark.parametrize("cell", ["5-2", "x-3", "4", "-1-3"])
def test_a_bad_window_is_refused_naming_its_row(tmp_path: Path, cell: str) -> None:
    table = _table(tmp_path, [f"0,1,{cell}", "1,1,"], "worker,speed,available")
    with pytest.raises(ConfigError) as caught:
        devices.availability(table, 2)
    assert "row 2, column available" in caught.value.parameter


def test_a_stock_strategy_refuses_availability_windows(tmp_path: Path) -> None:
    table = _table(tmp_path, ["0,1,0-1", "1,1,"], "worker,speed,available")
    config = least_squares_config(algorithm="flower:FedAvg", num_clients=2, device_speeds=table)
    with pytest.raises(ConfigError) as caught:
        run_in_process(config)
    assert caught.value.parameter == "device-speeds"
