"""The slicer's launch-boundary logic against a model device: queue depth, budgets and what it reports."""

from __future__ import annotations

from typing import Any

from flexnpu.shim.runtime.grant_client import Lease
from flexnpu.shim.runtime.slicer import METER_DECLARED, Slicer


class ModelDevice:
    """A device queue of declared kernels: ``settle`` finishes what was launched before the mark."""

    def __init__(self) -> None:
        self.queued: list[float] = []  # kernels launched and not finished, oldest first
        self.marked = 0  # how many of ``queued`` were launched before the mark
        self.finished_us = 0.0
        self.depth_after_settle: list[float] = []

    def launch(self, cost_us: float) -> None:
        self.queued.append(cost_us)

    def drain(self) -> None:
        self.finished_us += sum(self.queued)
        self.queued.clear()
        self.marked = 0

    def mark(self) -> None:
        self.marked = len(self.queued)

    def settle(self) -> None:
        self.finished_us += sum(self.queued[: self.marked])
        del self.queued[: self.marked]
        self.marked = 0
        self.depth_after_settle.append(sum(self.queued))


class ModelGrants:
    """Grants of ``budget_us`` that are always extended; records what the slicer reports."""

    def __init__(self, budget_us: int, inflight_us: int) -> None:
        self.budget_us, self.inflight_us = budget_us, inflight_us
        self.reported: list[int] = []
        self.seq = 0

    def _lease(self) -> Lease:
        self.seq += 1
        return Lease(self.seq, self.budget_us, inflight_us=self.inflight_us)

    def acquire(self) -> Lease:
        return self._lease()

    def extend(self, used_us: int) -> Lease:
        self.reported.append(used_us)
        return self._lease()

    def release(self, used_us: int, want: bool = False, ops_used: int = 0) -> None:
        self.reported.append(used_us)

    def revoked(self) -> bool:
        return False


def run(
    kernels: list[float], budget_us: int = 2000, inflight_us: int = 2000
) -> tuple[ModelDevice, ModelGrants, Slicer]:
    device, grants = ModelDevice(), ModelGrants(budget_us, inflight_us)
    slicer = Slicer(grants, device, METER_DECLARED)  # type: ignore[arg-type]
    for cost in kernels:
        slicer.launch(cost)
        device.launch(cost)
        # The reports never run ahead of the work the device finished (plus nothing queued).
        assert sum(grants.reported) <= device.finished_us
    return device, grants, slicer


def test_the_queue_never_runs_dry_at_a_settle_and_stays_bounded() -> None:
    kernels = [50.0, 5000.0, 100.0, 250.0, 2000.0, 50.0, 50.0, 1000.0] * 50
    device, _, _ = run(kernels, inflight_us=2000)
    assert device.depth_after_settle, "the slicer never bounded its run-ahead"
    assert min(device.depth_after_settle) >= 1000.0  # half the cap stays queued through the round trips
    assert max(device.depth_after_settle) <= 1000.0 + max(kernels)


def test_every_launched_microsecond_is_reported_once() -> None:
    kernels: list[Any] = [50.0, 5000.0, 100.0, 250.0, 2000.0] * 40
    device, grants, slicer = run(kernels)
    slicer.finish()
    assert sum(grants.reported) == sum(kernels) == device.finished_us


def test_work_carried_into_a_lease_does_not_spend_its_budget() -> None:
    # One extension per budget of new work, not one per launch while old work is still queued.
    kernels = [100.0] * 1000
    _, grants, slicer = run(kernels, budget_us=2000, inflight_us=4000)
    assert 45 <= slicer.slices <= 55  # 100,000 µs of work in 2,000 µs budgets
    assert len(grants.reported) == slicer.slices - 1
