"""PyTorch under the runtime: operator-level gating, step-level drains and the memory cap, torch imported lazily.

Operator level: a ``TorchDispatchMode`` calls the slicer before every operator (a launch boundary) and accounts
the storage of the tensors operators create. torch's dispatch modes are per thread: the mode is installed in the
thread that activates the runtime (the main thread for ``sitecustomize``); work launched from other threads is
gated at step level only (``flexnpu.shim.slice()``).

Memory cap: on ``npu`` / ``cuda`` the caching allocator enforces ``set_per_process_memory_fraction`` (its own
out-of-memory error); the accounting here enforces the cap exactly on every device, ``cpu`` included, and raises
an error that is both ``torch.OutOfMemoryError`` and ``MemoryCapExceeded``, in this process only.

Nothing here imports torch at module import: the runtime is loaded into every Python process of a pod.
"""

from __future__ import annotations

import importlib
import weakref
from typing import Any, Callable, Dict, List, Optional

from flexnpu.shim.runtime.errors import MemoryCapExceeded

KINDS = ("npu", "cuda", "cpu")


def import_torch() -> Any:
    return importlib.import_module("torch")


def detect_kind(torch: Any) -> str:
    """``npu`` when torch_npu is importable, else ``cuda`` when available, else ``cpu``."""
    try:
        importlib.import_module("torch_npu")
        return "npu"
    except ImportError:
        pass
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchDevice:
    """The slicer's view of one torch device: drain = synchronize, mark/settle = an event per slice."""

    def __init__(self, torch: Any, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError("torch device kind must be one of %s, not %r" % (", ".join(KINDS), kind))
        self.torch = torch
        self.kind = kind
        self._backend = getattr(torch, kind) if kind != "cpu" else None
        self._event: Any = None

    def drain(self) -> None:
        if self._backend is not None:
            self._backend.synchronize()

    def mark(self) -> None:
        if self._backend is not None:
            self._event = self._backend.Event()
            self._event.record()

    def settle(self) -> None:
        if self._event is not None:
            self._event.synchronize()

    def cap_memory(self, cap_mib: int) -> None:
        """Let the caching allocator refuse allocations past the cap (npu and cuda)."""
        if self._backend is None:
            return
        total = self._backend.get_device_properties(self._backend.current_device()).total_memory
        self._backend.set_per_process_memory_fraction(min(1.0, cap_mib * (1 << 20) / total))


class MemoryAccount:
    """Bytes held by live tensors of one device kind; creating one past the cap raises out-of-memory."""

    def __init__(self, torch: Any, kind: str, cap_bytes: Optional[int]) -> None:
        self.kind = kind
        self.cap_bytes = cap_bytes
        self.used_bytes = 0
        self.peak_bytes = 0
        self._live: Dict[int, List[int]] = {}
        base = getattr(torch, "OutOfMemoryError", RuntimeError)
        self.error: type = type("FlexnpuOutOfMemoryError", (base, MemoryCapExceeded), {})

    def track(self, value: Any) -> None:
        for tensor in _tensors(value):
            if tensor.device.type == self.kind:
                self._track_one(tensor)

    def _track_one(self, tensor: Any) -> None:
        storage = tensor.untyped_storage()
        nbytes = int(storage.nbytes())
        ptr = int(storage.data_ptr())
        if nbytes == 0 or ptr == 0:
            return
        entry = self._live.get(ptr)
        if entry is None:
            if self.cap_bytes is not None and self.used_bytes + nbytes > self.cap_bytes:
                raise self.error(
                    "flexnpu: out of device memory: %d bytes more would pass this pod's cap of %d "
                    "bytes (%d in use)" % (nbytes, self.cap_bytes, self.used_bytes)
                )
            entry = self._live[ptr] = [nbytes, 0]
            self.used_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.used_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._forget, ptr)

    def _forget(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._live[ptr]
            self.used_bytes -= entry[0]


def _tensors(value: Any) -> List[Any]:
    if isinstance(value, (tuple, list)):
        found: List[Any] = []
        for item in value:
            found.extend(_tensors(item))
        return found
    return [value] if hasattr(value, "untyped_storage") else []


def install_operator_gate(torch: Any, before_op: Callable[[], None], account: MemoryAccount) -> Any:
    """Enter a dispatch mode (in this thread) that gates every operator and accounts its outputs; returns it."""
    dispatch = importlib.import_module("torch.utils._python_dispatch")

    class GateMode(dispatch.TorchDispatchMode):  # type: ignore[misc, name-defined]
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            before_op()
            out = func(*args, **(kwargs or {}))
            account.track(out)
            return out

    mode = GateMode()
    mode.__enter__()
    return mode
