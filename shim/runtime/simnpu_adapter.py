"""The simulated NPU under the runtime: kernel launches gated on grants, memory capped exactly by the device.

The declared duration of each kernel bounds the work queued ahead of the device (the slicer's ``declared`` meter);
the usage reported to flexnpud is what the device measured: each synchronisation's reply carries the device time
this context's finished kernels took, as a pair of events around them would on a real card.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from flexnpu.shim.runtime.simnpu_client import SimNpuClient
from flexnpu.shim.runtime.slicer import METER_DECLARED, Grants, Slicer


class GatedSimNpu:
    """A simulated-NPU context whose launches wait for grants (``grants`` None: ungated, the native baseline)."""

    def __init__(self, client: SimNpuClient, grants: Optional[Grants]) -> None:
        self.client = client
        self.slicer: Optional[Slicer] = Slicer(grants, self, METER_DECLARED) if grants is not None else None
        self._mark = 0

    def launch(self, duration_us: float) -> None:
        if self.slicer is not None:
            self.slicer.launch(duration_us)
        self.client.launch(duration_us)

    def allocate(self, mib: int) -> int:
        """Device memory; DeviceOutOfMemoryError past this context's cap (enforced by the device itself)."""
        return self.client.allocate(mib)

    def free(self, handle: int) -> None:
        self.client.free(handle)

    @contextmanager
    def step(self) -> Iterator[None]:
        """One grant for the block's kernels (step level); ungated it only synchronizes at the end."""
        if self.slicer is None:
            yield
            self.drain()
            return
        with self.slicer.step():
            yield

    def finish(self) -> None:
        if self.slicer is not None:
            self.slicer.finish()
        self.drain()

    def close(self) -> None:
        self.finish()
        if self.slicer is not None:
            self.slicer.grants.close()
        self.client.close()

    # ----- the slicer's Device ------------------------------------------------------------------------------------

    def drain(self) -> None:
        self.client.synchronize()

    def mark(self) -> None:
        self._mark = self.client.launched

    def settle(self) -> None:
        self.client.synchronize(self._mark)

    def measured_us(self) -> int:
        """Device time of this context's finished kernels as the device timed them (as of the last sync)."""
        return self.client.device_busy_us
