"""Gating one process's device work on grants: the launch-boundary logic every adapter shares.

An adapter calls ``launch(cost_us)`` before it hands one operator (kernel) to the device. Without a lease the call
blocks for a grant; when the lease's budget is spent the slicer first asks for an extension (no drain: the
in-flight work keeps the device busy meanwhile) and otherwise drains, reports the device time used and waits for
the next grant; a revoke (a higher-priority tenant is waiting) ends the lease at this boundary. ``step()`` is the
step-level variant: one grant per model step, released when the step's work has drained.

Device time is metered ``declared`` (the sum of the costs of launched work: exact on the simulated NPU, whose
kernels have known durations) or ``wall`` (time from the grant to the end of the drain: what a framework without
per-kernel timing can measure, never less than the device time used).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol

from flexnpu.shim.runtime.grant_client import Lease

METER_DECLARED = "declared"
METER_WALL = "wall"
# Declared work queued ahead of the device is kept near this bound, so that a revoke (a higher-priority tenant
# waiting) is honoured after at most about this much in-flight work plus one kernel.
DEFAULT_INFLIGHT_CAP_US = 2000.0


class Device(Protocol):
    """What the slicer needs of a device adapter."""

    def drain(self) -> None:
        """Wait until every launched piece of work has finished."""

    def mark(self) -> None:
        """Remember the current end of the launch queue (a slice starts here)."""

    def settle(self) -> None:
        """Wait until the work launched before the last ``mark`` has finished (bounds run-ahead to one slice)."""


class Grants(Protocol):
    """Where the slicer gets grants: the shared-memory client (``shm_client``) or the socket client."""

    def acquire(self) -> Lease: ...

    def extend(self, used_us: int) -> Optional[Lease]: ...

    def release(self, used_us: int, want: bool = False, ops_used: int = 0) -> None: ...

    def revoked(self) -> bool: ...

    def close(self) -> None: ...

    # Optional: ``report(used_us)``, device time known done within the lease (the shared-memory client has it).


class Slicer:
    """Launch-boundary gating of one process (one thread launching at a time)."""

    def __init__(
        self,
        grants: Grants,
        device: Device,
        meter: str = METER_WALL,
        clock: Callable[[], float] = time.perf_counter,
        inflight_cap_us: float = DEFAULT_INFLIGHT_CAP_US,
    ) -> None:
        if meter not in (METER_DECLARED, METER_WALL):
            raise ValueError("meter must be 'declared' or 'wall', not %r" % (meter,))
        self.grants = grants
        # The shared-memory path reads usage from the slot at its deadlines (and credits the next holder with what
        # the former one reports after its deadline): report completed work as it completes, as libflexnpu does.
        self._report_progress: Optional[Callable[[int], None]] = getattr(grants, "report", None)
        self._device = device
        # A device that times its own work (``measured_us()``, cumulative µs of finished work) is reported by that.
        self._measured: Optional[Callable[[], int]] = getattr(device, "measured_us", None)
        self._measured_reported = 0
        self._default_cap_us = inflight_cap_us
        self._inflight_cap_us = inflight_cap_us
        self._since_mark_us = 0.0
        self._mark_declared_us = 0.0
        self._settled_declared_us = 0.0
        self._carried_us = 0.0
        self._meter = meter
        self._clock = clock
        self._lease: Optional[Lease] = None
        self._started = 0.0
        self._reported_us = 0
        self._declared_us = 0.0
        self._ops = 0
        self.slices = 0
        self.drains = 0
        self.device_time_us = 0
        self._in_step = False

    @property
    def holding(self) -> bool:
        return self._lease is not None

    def launch(self, cost_us: float = 0.0) -> None:
        """Call before each launch: returns when this launch may go to the device."""
        if self._in_step:
            return
        lease = self._lease
        if lease is None:
            self._begin()
        elif self._spent(lease) or self.grants.revoked():
            self._renew(lease)
        if self._meter == METER_DECLARED:
            # Bound the work queued ahead of the device (what a revoke waits for) by about the cap, and never let
            # it run dry: once half a cap has been launched since the mark, wait for the work before the mark. The
            # half launched since then stays queued and keeps the device busy through the round trips that follow.
            if self._since_mark_us >= self._inflight_cap_us / 2:
                self._device.settle()
                self._settled_declared_us = self._mark_declared_us  # the work before the mark is done now
                if self._report_progress is not None:  # the shm path: usage known done goes out as it completes
                    progress = int(self._settled_declared_us) - self._reported_us
                    if progress > 0:
                        reported = self._reportable(progress)
                        self._report_progress(reported)
                        self._reported_us += progress
                        self.device_time_us += reported
                self._device.mark()
                self._mark_declared_us = self._declared_us
                self._since_mark_us = 0.0
            self._since_mark_us += cost_us
        self._declared_us += cost_us
        self._ops += 1

    def finish(self) -> None:
        """Stop using the device: drain, report and return the lease (wanting nothing)."""
        if self._lease is not None:
            self._end(want=False)

    @contextmanager
    def step(self) -> Iterator[Lease]:
        """One grant for the whole block (step level: an inference step); released when its work drained."""
        if self._in_step:
            raise RuntimeError("flexnpu: slice() blocks do not nest")
        lease = self._lease if self._lease is not None else self._begin()
        self._in_step = True
        try:
            yield lease
        finally:
            self._in_step = False
            self._end(want=False)

    # ----- internals ------------------------------------------------------------------------------------------

    def _begin(self) -> Lease:
        lease = self.grants.acquire()
        self._start(lease)
        return lease

    def _start(self, lease: Lease, carried_us: float = 0.0) -> None:
        """A new lease; ``carried_us`` of declared work launched under the previous one is still in flight."""
        self._device.mark()
        self._inflight_cap_us = float(lease.inflight_us) if lease.inflight_us else self._default_cap_us
        self._mark_declared_us = carried_us
        self._settled_declared_us = 0.0
        self._carried_us = carried_us
        self._since_mark_us = 0.0
        self._lease = lease
        self._started = self._clock()
        self._reported_us = 0
        self._declared_us = carried_us
        self._ops = 0
        self.slices += 1

    def _spent(self, lease: Lease) -> bool:
        if lease.ops is not None:
            return self._ops >= lease.ops or self._elapsed_us() >= lease.budget_us
        if self._meter == METER_DECLARED:  # the budget is for work launched under this lease
            return self._declared_us - self._carried_us >= lease.budget_us
        return self._elapsed_us() >= lease.budget_us

    def _renew(self, lease: Lease) -> None:
        if not self.grants.revoked() and lease.ops is None and not lease.local:
            # Report only work known to be done: charging queued work before it ran would make the scheduler see
            # a tenant ahead of its share. The declared meter bounds run-ahead at every launch already; waiting
            # here too could empty the device queue while the extension's round trip is under way.
            if self._meter != METER_DECLARED:
                self._device.settle()
            done = self._completed_us()
            used = int(done) - self._reported_us
            reported = self._reportable(used)
            renewed = self.grants.extend(reported)
            self.device_time_us += reported
            if renewed is not None:
                carried = self._declared_us - done if self._meter == METER_DECLARED else 0.0
                self._start(renewed, carried_us=carried)
                return
            self._reported_us += used  # charged by the refused extension; the release reports the rest
        self._end(want=True)
        self._begin()

    def _completed_us(self) -> float:
        """Device time of this lease known to be done after ``settle`` (the wall meter cannot tell: all of it)."""
        if self._meter == METER_DECLARED:
            return self._settled_declared_us
        return self._elapsed_us()

    def _end(self, want: bool) -> None:
        lease = self._lease
        if lease is None:
            return
        if lease.ops is None:
            self.drains += 1
            self._device.drain()  # the seed's ops mode does not drain: several tenants interleave on purpose
        used = self._reportable(self._used_us() - self._reported_us)
        self.device_time_us += used
        self.grants.release(used, want=want, ops_used=self._ops)
        self._lease = None

    def _reportable(self, used_us: int) -> int:
        """What to report for ``used_us`` of metered work: the device's own measurement since the last report when
        the device measures (``measured_us``: event-timed), else the meter's figure."""
        if self._measured is None:
            return used_us
        measured = int(self._measured())
        delta, self._measured_reported = (
            max(0, measured - self._measured_reported),
            max(self._measured_reported, measured),
        )
        return delta

    def _used_us(self) -> int:
        if self._meter == METER_DECLARED:
            return int(self._declared_us)
        return int(self._elapsed_us())

    def _elapsed_us(self) -> float:
        return (self._clock() - self._started) * 1e6
