"""Usage reported by the Python runtime is what the device measured, not what the tenant declared: the simulated
NPU's sync replies carry the device time a context's finished kernels took (as events around them would on a
real card), and the slicer reports that to flexnpud."""

from __future__ import annotations

from flexnpu.shim.runtime.grant_client import Lease
from flexnpu.shim.runtime.simnpu_adapter import GatedSimNpu
from flexnpu.shim.runtime.simnpu_client import SimNpuClient
from flexnpu.shim.runtime.slicer import METER_DECLARED, Slicer


class Grants:
    """A grant source that always grants and records what it is told."""

    def __init__(self) -> None:
        self.reports: list[int] = []
        self.released: list[int] = []

    def acquire(self) -> Lease:
        return Lease(1, 10**9)

    def extend(self, used_us: int) -> Lease | None:
        self.reports.append(used_us)
        return Lease(2, 10**9)

    def release(self, used_us: int, want: bool = False, ops_used: int = 0) -> None:
        self.released.append(used_us)

    def revoked(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def report(self, used_us: int) -> None:
        self.reports.append(used_us)


class TimedDevice:
    """A device whose own timing says each kernel took 10% longer than declared."""

    def __init__(self) -> None:
        self.launched_us = 0.0
        self.finished_us = 0.0

    def drain(self) -> None:
        self.finished_us = self.launched_us

    def mark(self) -> None:
        self._mark = self.launched_us

    def settle(self) -> None:
        self.finished_us = max(self.finished_us, self._mark)

    def measured_us(self) -> int:
        return int(self.finished_us * 1.1)


def test_the_slicer_reports_the_devices_measurement_not_the_declared_cost() -> None:
    grants, device = Grants(), TimedDevice()
    slicer = Slicer(grants, device, METER_DECLARED)
    for _ in range(20):
        slicer.launch(500)
        device.launched_us += 500
    slicer.finish()
    total = sum(grants.reports) + sum(grants.released)
    assert total == 11_000  # 20 x 500 declared, 10% more measured: the measurement is what flexnpud hears
    assert grants.reports and all(r >= 0 for r in grants.reports)  # progress went out before the end
    assert slicer.device_time_us == 11_000


def test_the_simulated_npu_times_a_contexts_finished_kernels(sim_socket: str) -> None:
    client = SimNpuClient(sim_socket, name="timed")
    try:
        device = GatedSimNpu(client, None)
        assert device.measured_us() == 0
        device.launch(300)
        device.launch(200)
        device.drain()
        assert device.measured_us() == 500  # the device's own timing of the two kernels
        device.launch(1000)
        device.mark()
        device.settle()  # the work before the mark (all of it): done
        assert device.measured_us() == 1500
    finally:
        client.close()
