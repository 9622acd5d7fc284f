"""The real-time simulated NPU: a real ``flexnpu simnpu`` process shared by clients, as pods share a card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rt_helpers import run_child, wait_for

from flexnpu.shim.runtime.simnpu_client import DeviceOutOfMemoryError, SimNpuClient, SimNpuError

HBM_910B3_MIB = 65536


def test_accounting_is_the_sum_of_kernel_durations(sim_socket: str) -> None:
    with SimNpuClient(sim_socket, "a") as a, SimNpuClient(sim_socket, "b") as b:
        a.launch_many([100, 250, 400])
        b.launch(700)
        a.synchronize()
        b.synchronize()
        stats = a.stats()
    assert stats["a"]["busy_us"] == 750
    assert stats["a"]["kernels"] == 3
    assert stats["b"]["busy_us"] == 700


def test_one_engine_runs_kernels_in_arrival_order_across_clients(sim_socket: str) -> None:
    with SimNpuClient(sim_socket, "first") as first, SimNpuClient(sim_socket, "second") as second:
        first.launch_many([2000] * 5)
        first.stats()  # a round trip: the server has queued first's kernels before second's arrives
        second.launch(50)
        second.synchronize()
        # non-preemptive FIFO: second's short kernel ran only after every kernel queued before it
        assert second.stats()["first"]["kernels"] == 5


def test_launch_is_asynchronous_and_sync_waits(sim_socket: str) -> None:
    with SimNpuClient(sim_socket, "a") as a:
        a.launch_many([20000] * 5)
        queued = a.stats()["a"]["kernels"]
        a.synchronize()
        done = a.stats()["a"]["kernels"]
    assert queued < 5
    assert done == 5


def test_memory_cap_refuses_only_the_capped_client(sim_socket: str) -> None:
    with SimNpuClient(sim_socket, "capped", cap_mib=1024) as capped, SimNpuClient(sim_socket, "free") as free:
        capped.allocate(1000)
        with pytest.raises(DeviceOutOfMemoryError, match="cap of 1024 MiB"):
            capped.allocate(100)
        handle = free.allocate(4096)
        free.free(handle)
        assert capped.stats()["capped"]["memory_mib"] == 1000


def test_card_capacity_is_enforced(sim_socket: str) -> None:
    with SimNpuClient(sim_socket, "big") as big, SimNpuClient(sim_socket, "late") as late:
        big.allocate(HBM_910B3_MIB - 10)
        with pytest.raises(DeviceOutOfMemoryError, match="card 0's memory"):
            late.allocate(11)
        late.allocate(10)


def test_memory_of_an_exited_process_returns_to_the_card(sim_socket: str, tmp_path: Path) -> None:
    code = (
        f"from flexnpu.shim.runtime.simnpu_client import SimNpuClient\n"
        f"c = SimNpuClient({sim_socket!r}, 'gone'); c.allocate({HBM_910B3_MIB})\n"
    )
    assert run_child(tmp_path, code).returncode == 0
    with SimNpuClient(sim_socket, "next") as nxt:
        wait_for(lambda: nxt.stats()["gone"]["memory_mib"] == 0, "the exited process's memory to be freed")
        nxt.allocate(HBM_910B3_MIB)


def test_bad_kernel_duration_surfaces_at_the_next_sync(sim_socket: str) -> None:
    with SimNpuClient(sim_socket, "a") as a:
        a.launch(-5)
        with pytest.raises(SimNpuError, match="kernel durations"):
            a.synchronize()
        a.launch(10)
        a.synchronize()


def test_unreachable_simulator_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SimNpuError, match="unreachable"):
        SimNpuClient(str(tmp_path / "nobody.sock"))


def test_bad_card_is_refused(sim_socket: str) -> None:
    with pytest.raises(SimNpuError, match="no card 3"):
        SimNpuClient(sim_socket, card=3)


@pytest.mark.parametrize("argv", [["--cards", "0"], ["--model", "910C"], ["--bogus"]])
def test_cli_rejects_bad_flags(argv: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", "simnpu", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
