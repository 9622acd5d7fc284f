"""The simulated NPU model: FIFO non-preemptive engine, memory capacity and caps, ground-truth accounting."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flexnpu.shim.core.simdevice import DeviceError, SimDevice, SimDeviceOutOfMemoryError


def device(*clients: str, memory: int = 1000) -> SimDevice:
    dev = SimDevice(memory)
    for client in clients:
        dev.add_client(client)
    return dev


def test_kernels_run_one_at_a_time_in_arrival_order_across_clients() -> None:
    dev = device("a", "b")
    dev.submit("a", 300, 0)
    dev.submit("b", 100, 10)
    dev.submit("a", 200, 20)
    done = dev.advance(10_000)
    assert [(k.client, k.started_us, k.finished_us) for k in done] == [("a", 0, 300), ("b", 300, 400), ("a", 400, 600)]


def test_a_running_kernel_is_not_preempted_and_launches_are_asynchronous() -> None:
    dev = device("a", "b")
    dev.submit("a", 5000, 0)
    dev.submit("b", 50, 100)
    assert dev.advance(4999) == []
    assert dev.outstanding("b") == 1 and dev.queued_work_us("b") == 50
    assert [k.client for k in dev.advance(5000)] == ["a"]
    assert dev.running_client() == "b"


def test_an_idle_engine_starts_a_kernel_when_it_arrives() -> None:
    dev = device("a")
    dev.submit("a", 100, 0)
    dev.submit("a", 100, 1000)  # finished kernels before this launch are kept for the next advance
    assert [(k.started_us, k.finished_us) for k in dev.advance(2000)] == [(0, 100), (1000, 1100)]
    assert dev.next_completion_us() is None


def test_busy_time_counts_the_running_part_and_nothing_else() -> None:
    dev = device("a", "b")
    dev.submit("a", 1000, 0)
    dev.submit("b", 1000, 0)
    dev.advance(1500)
    assert (dev.busy_us("a"), dev.busy_us("b")) == (1000, 500)
    running = dev.running_kernel()
    assert running is not None and running.duration_us == 500
    dev.advance(5000)
    assert (dev.busy_us("a"), dev.busy_us("b"), dev.total_busy_us) == (1000, 1000, 2000)


def test_ungated_backlogged_clients_get_equal_time_whatever_they_registered() -> None:
    dev = device("small", "large")
    now = 0
    for client in ("small", "large"):
        for _ in range(4):
            dev.submit(client, 100, now)
    while now < 100_000:
        now = dev.next_completion_us() or now
        for kernel in dev.advance(now):
            dev.submit(kernel.client, 100, now)
    assert dev.busy_us("small") == pytest.approx(dev.busy_us("large"), rel=0.01)


def test_memory_cap_is_exact_and_a_refusal_changes_nothing() -> None:
    dev = SimDevice(1000)
    dev.add_client("a", memory_cap_bytes=300)
    dev.alloc("a", 300)
    with pytest.raises(SimDeviceOutOfMemoryError, match="its cap"):
        dev.alloc("a", 1)
    assert dev.memory_used("a") == 300
    dev.free("a", 100)
    assert dev.memory_used("a") == 200
    dev.alloc("a", 100)
    assert dev.memory_used("a") == 300


def test_card_capacity_is_shared_and_one_client_failing_leaves_the_other_alone() -> None:
    dev = device("a", "b", memory=1000)
    dev.alloc("a", 700)
    with pytest.raises(SimDeviceOutOfMemoryError, match="card's memory"):
        dev.alloc("b", 400)
    dev.alloc("b", 300)
    assert (dev.memory_used("a"), dev.memory_used("b"), dev.memory_in_use()) == (700, 300, 1000)


def test_removing_a_client_frees_its_memory() -> None:
    dev = device("a", "b", memory=1000)
    dev.alloc("a", 1000)
    with pytest.raises(SimDeviceOutOfMemoryError):
        dev.alloc("b", 1)
    dev.remove_client("a")
    assert dev.memory_in_use() == 0
    dev.alloc("b", 1000)
    assert (dev.memory_used("a"), dev.memory_used("b"), dev.memory_in_use()) == (0, 1000, 1000)


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.submit("x", 10, 0),
        lambda d: d.submit("a", 0, 0),
        lambda d: d.alloc("a", 0),
        lambda d: d.free("a", 1),
        lambda d: d.alloc("x", 1),
        lambda d: d.add_client("b", -1),
    ],
)
def test_bad_requests_are_refused(call: Callable[[SimDevice], object]) -> None:
    dev = device("a")
    with pytest.raises(DeviceError):
        call(dev)
