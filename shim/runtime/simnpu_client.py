"""Client of the real-time simulated NPU (``flexnpu simnpu``), standard library only.

A process opens a context on one card of the simulated device, allocates memory and launches kernels that run
asynchronously: ``launch`` returns at once, like a framework queueing work on an NPU stream, and only
``synchronize`` waits. The server enforces the memory cap exactly and accounts busy time per context. The
in-pod runtime's simulated-NPU adapter gates this client; tests, the demo and the benchmarks use it directly.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from flexnpu.shim.runtime.errors import MemoryCapExceeded
from flexnpu.shim.runtime.wire import LineSocket, Message, WireError, connect_unix


class SimNpuError(Exception):
    """The simulated NPU refused a request or is unreachable."""


class DeviceOutOfMemoryError(SimNpuError, MemoryCapExceeded):
    """An allocation would pass this context's memory cap or the card's capacity (this process only)."""


class SimNpuClient:
    """One context on one card of the simulated NPU; not thread-safe (one per thread or process)."""

    def __init__(self, socket_path: str, name: str = "", card: int = 0, cap_mib: Optional[int] = None) -> None:
        try:
            self._conn: LineSocket = connect_unix(socket_path)
        except OSError as exc:
            raise SimNpuError("simulated NPU at " + socket_path + " unreachable: " + str(exc)) from exc
        self._conn.sock.settimeout(None)
        self.name = name or "pid-" + str(os.getpid())
        try:
            reply = self._call({"op": "open", "name": self.name, "card": card, "cap_mib": cap_mib})
        except SimNpuError:
            self._conn.close()
            raise
        self.card = card
        self.capacity_mib = int(reply["capacity_mib"])
        self.launched = 0
        self.launched_us = 0.0
        self.device_busy_us = 0  # device-timed time of this context's finished kernels, as of the last sync

    def launch(self, duration_us: float) -> None:
        """Queue one kernel that keeps the engine busy ``duration_us``; returns without waiting."""
        self._send({"op": "launch", "us": float(duration_us)})
        self.launched += 1
        self.launched_us += duration_us

    def launch_many(self, durations_us: Sequence[float]) -> None:
        self._send({"op": "launch", "us": [float(d) for d in durations_us]})
        self.launched += len(durations_us)
        self.launched_us += sum(durations_us)

    def synchronize(self, upto: Optional[int] = None) -> None:
        """Wait until every kernel this context launched (or the first ``upto`` of them) has finished; the reply
        says how much device time this context's finished kernels took, as the device timed them."""
        reply = self._call({"op": "sync"} if upto is None else {"op": "sync", "upto": int(upto)})
        busy = reply.get("busy_us")
        if isinstance(busy, (int, float)) and not isinstance(busy, bool) and 0 <= busy < 2**62:
            self.device_busy_us = max(self.device_busy_us, int(busy))

    def allocate(self, mib: int) -> int:
        """A handle to ``mib`` MiB of device memory; DeviceOutOfMemoryError past the cap or the capacity."""
        return int(self._call({"op": "alloc", "mib": int(mib)})["handle"])

    def free(self, handle: int) -> None:
        self._call({"op": "free", "handle": int(handle)})

    def stats(self) -> Dict[str, Dict[str, float]]:
        """Ground truth of the card this context is on, by context name: busy_us, kernels, memory_mib."""
        reply = self._call({"op": "stats"})
        clients: Dict[str, Dict[str, float]] = reply["clients"]
        return clients

    def now_us(self) -> float:
        return float(self._call({"op": "stats"})["now_us"])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SimNpuClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, message: Message) -> None:
        try:
            self._conn.send(message)
        except WireError as exc:
            raise SimNpuError("simulated NPU connection lost: " + str(exc)) from exc

    def _call(self, message: Message) -> Message:
        self._send(message)
        try:
            reply = self._conn.receive()
        except WireError as exc:
            raise SimNpuError("simulated NPU connection lost: " + str(exc)) from exc
        if reply.get("ok"):
            return reply
        text = str(reply.get("message", "request refused"))
        if reply.get("error") == "oom":
            raise DeviceOutOfMemoryError(text)
        raise SimNpuError(text)
