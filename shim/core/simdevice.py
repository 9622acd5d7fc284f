"""A pure model of the simulated NPU (DESIGN.md section 8): what one card does natively, with time passed in.

One non-preemptive compute engine runs submitted kernels one at a time, in arrival order across clients; each
client's launches are asynchronous (``submit`` returns at once, the kernel waits in the device queue). Device
memory has a capacity and an optional per-client cap, both enforced exactly. The model keeps its own ground-truth
accounting of busy time and memory per client and knows nothing about shares or priorities, so no figure measured
on it can depend on the scheduler's own view.

The real-time simulated NPU server (``flexnpu simnpu``) and the virtual-time simulation
(``flexnpu.shim.core.virtual``) both wrap this class. Time is an ``int`` of microseconds that never goes back
(an earlier ``now_us`` is treated as the latest one seen).

API: ``SimDevice(memory_bytes)``, ``add_client(client, memory_cap_bytes=None)``, ``remove_client``,
``submit(client, duration_us, now_us) -> kernel id``, ``advance(now_us) -> [CompletedKernel]``,
``next_completion_us()``, ``alloc(client, nbytes, now_us=...)`` / ``free(client, nbytes)``, and the ground truth:
``busy_us(client)`` (including the running part of a kernel), ``memory_used(client)``, ``outstanding(client)``,
``queued_work_us(client)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from flexnpu.errors import FlexnpuError


class DeviceError(FlexnpuError):
    """A request the simulated device refuses (unknown client, bad size or duration)."""


class SimDeviceOutOfMemoryError(DeviceError):
    """An allocation past the client's cap or past the card's free memory; the device state is unchanged.

    The simulated device's own error; the simulated NPU server sends it over the wire, and the client side
    raises ``flexnpu.shim.runtime.simnpu_client.DeviceOutOfMemoryError`` from that message.
    """

    def __init__(self, client: str, nbytes: int, used: int, limit: int, what: str) -> None:
        self.client = client
        self.nbytes = nbytes
        self.used = used
        self.limit = limit
        super().__init__(
            f"out of device memory: client {client!r} asked {nbytes} bytes with {used} in use, {what} is {limit} bytes"
        )


@dataclass(frozen=True)
class CompletedKernel:
    """One kernel the engine ran, with its ground-truth timing."""

    client: str
    kernel_id: int
    duration_us: int
    submitted_us: int
    started_us: int
    finished_us: int


@dataclass
class _Kernel:
    client: str
    kernel_id: int
    duration_us: int
    submitted_us: int
    started_us: int = -1


@dataclass
class _Client:
    memory_cap: int | None
    memory_used: int = 0
    busy_us: int = 0  # finished kernels only; the running one is added on read
    outstanding: int = 0
    queued_work_us: int = 0  # kernels submitted and not started


class SimDevice:
    """One card: FIFO non-preemptive engine, memory with capacity and per-client caps, ground-truth accounting."""

    def __init__(self, memory_bytes: int) -> None:
        if memory_bytes <= 0:
            raise DeviceError(f"device memory must be positive, got {memory_bytes}")
        self.memory_bytes = memory_bytes
        self._clients: dict[str, _Client] = {}
        self._queue: deque[_Kernel] = deque()
        self._running: _Kernel | None = None
        self._now = 0
        self._next_id = 0
        self._pending_done: list[CompletedKernel] = []
        self.total_busy_us = 0

    # ----- clients and memory -------------------------------------------------------------------------------

    def add_client(self, client: str, memory_cap_bytes: int | None = None) -> None:
        """Open a context for ``client`` (idempotent: a second call only updates the cap)."""
        if memory_cap_bytes is not None and memory_cap_bytes < 0:
            raise DeviceError(f"memory cap must not be negative, got {memory_cap_bytes}")
        state = self._clients.get(client)
        if state is None:
            self._clients[client] = _Client(memory_cap_bytes)
        else:
            state.memory_cap = memory_cap_bytes

    def remove_client(self, client: str) -> None:
        """Close the context: its memory is freed; kernels already queued still run (the engine cannot undo)."""
        self._client(client).memory_used = 0

    def alloc(self, client: str, nbytes: int) -> None:
        """Reserve ``nbytes`` of device memory for ``client`` or raise ``SimDeviceOutOfMemoryError``."""
        state = self._client(client)
        if nbytes <= 0:
            raise DeviceError(f"allocation size must be positive, got {nbytes}")
        if state.memory_cap is not None and state.memory_used + nbytes > state.memory_cap:
            raise SimDeviceOutOfMemoryError(client, nbytes, state.memory_used, state.memory_cap, "its cap")
        if self.memory_in_use() + nbytes > self.memory_bytes:
            raise SimDeviceOutOfMemoryError(client, nbytes, state.memory_used, self.memory_bytes, "the card's memory")
        state.memory_used += nbytes

    def free(self, client: str, nbytes: int) -> None:
        """Give back ``nbytes``; freeing more than the client holds is an error and changes nothing."""
        state = self._client(client)
        if nbytes <= 0 or nbytes > state.memory_used:
            raise DeviceError(f"client {client!r} cannot free {nbytes} bytes with {state.memory_used} in use")
        state.memory_used -= nbytes

    def memory_in_use(self) -> int:
        return sum(c.memory_used for c in self._clients.values())

    def memory_used(self, client: str) -> int:
        return self._client(client).memory_used

    # ----- compute ------------------------------------------------------------------------------------------

    def submit(self, client: str, duration_us: int, now_us: int) -> int:
        """Queue one kernel of ``duration_us`` for ``client`` (asynchronous launch); returns its id.

        Kernels that finished before ``now_us`` are kept for the next ``advance`` to return.
        """
        state = self._client(client)
        if duration_us <= 0:
            raise DeviceError(f"kernel duration must be positive, got {duration_us}")
        self._pending_done = self.advance(now_us)
        kernel = _Kernel(client, self._next_id, duration_us, self._now)
        self._next_id += 1
        self._queue.append(kernel)
        state.outstanding += 1
        state.queued_work_us += duration_us
        if self._running is None:
            self._start_next(self._now)
        return kernel.kernel_id

    def advance(self, now_us: int) -> list[CompletedKernel]:
        """Run the engine up to ``now_us``; return the kernels that finished, in order."""
        done, self._pending_done = self._pending_done, []
        now = max(now_us, self._now)
        while self._running is not None and self._running.started_us + self._running.duration_us <= now:
            done.append(self._finish_running())
        self._now = now
        return done

    def next_completion_us(self) -> int | None:
        """When the running kernel finishes, or None when the engine is idle."""
        if self._running is None:
            return None
        return self._running.started_us + self._running.duration_us

    # ----- ground truth -------------------------------------------------------------------------------------

    @property
    def now_us(self) -> int:
        return self._now

    def busy_us(self, client: str) -> int:
        """Device time ``client``'s kernels have used up to now, including the running part of a kernel."""
        total = self._client(client).busy_us
        running = self._running
        if running is not None and running.client == client:
            total += min(self._now, running.started_us + running.duration_us) - running.started_us
        return total

    def outstanding(self, client: str) -> int:
        """Kernels of ``client`` submitted and not finished (queued or running)."""
        return self._client(client).outstanding

    def queued_work_us(self, client: str) -> int:
        """Device time of ``client``'s kernels submitted and not started yet."""
        return self._client(client).queued_work_us

    def running_client(self) -> str | None:
        return None if self._running is None else self._running.client

    def running_kernel(self) -> CompletedKernel | None:
        """The kernel on the engine now, cut at the current time (for accounting up to now)."""
        kernel = self._running
        if kernel is None or kernel.started_us >= self._now:
            return None
        return CompletedKernel(
            kernel.client,
            kernel.kernel_id,
            self._now - kernel.started_us,
            kernel.submitted_us,
            kernel.started_us,
            self._now,
        )

    # ----- internals ----------------------------------------------------------------------------------------

    def _finish_running(self) -> CompletedKernel:
        kernel = self._running
        assert kernel is not None
        finished = kernel.started_us + kernel.duration_us
        state = self._clients[kernel.client]
        state.busy_us += kernel.duration_us
        state.outstanding -= 1
        self.total_busy_us += kernel.duration_us
        self._running = None
        self._start_next(finished)
        return CompletedKernel(
            kernel.client, kernel.kernel_id, kernel.duration_us, kernel.submitted_us, kernel.started_us, finished
        )

    def _start_next(self, at_us: int) -> None:
        if not self._queue:
            return
        kernel = self._queue.popleft()
        kernel.started_us = max(at_us, kernel.submitted_us)
        self._clients[kernel.client].queued_work_us -= kernel.duration_us
        self._running = kernel

    def _client(self, client: str) -> _Client:
        try:
            return self._clients[client]
        except KeyError:
            raise DeviceError(f"unknown client {client!r}") from None
