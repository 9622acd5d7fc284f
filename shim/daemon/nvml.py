"""flexnpud's reading of NVML: per-process device memory on CUDA nodes, for the memory watch (``memwatch``).

The adapter for one protocol: ``libnvidia-ml.so.1`` through ctypes (standard library), the names and layout of
NVIDIA's ``nvml.h`` (CUDA 12):

- ``nvmlInit_v2()`` once (NVML counts its inits; ``close()`` calls ``nvmlShutdown()``), retried each round until it
  succeeds;
- ``nvmlDeviceGetCount_v2(unsigned *)``, ``nvmlDeviceGetHandleByIndex_v2(unsigned, nvmlDevice_t *)``;
- ``nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t, unsigned *infoCount, nvmlProcessInfo_t *infos)`` with
  ``nvmlProcessInfo_t`` = ``{unsigned pid; unsigned long long usedGpuMemory; unsigned gpuInstanceId;
  unsigned computeInstanceId}`` (``nvmlProcessInfo_v2_t``); ``NVML_ERROR_INSUFFICIENT_SIZE`` (7) sets
  ``*infoCount`` to the room needed, and the call is repeated with that much (processes come and go in between);
- ``nvmlErrorString`` for the messages.

A GPU's NVML index is the registration's ``npu`` and its ``chip`` is 0 (NVML numbers GPUs in PCI bus order, as
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` does; the device plugin hands out cards by that index). The pids are the host's
(flexnpud runs in the host's pid namespace, as it does for npu-smi). Every figure is clamped as hostile
(``flexnpu.shim.core.memory.clamp_bytes``); a process whose memory NVML does not show (``NVML_VALUE_NOT_AVAILABLE``:
no permission to see it) is left out of the verdicts and logged once per pid, since an unknown figure is not 0.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Final

from flexnpu.shim.core.memory import ProcessUsage, clamp_bytes

log = logging.getLogger(__name__)

DEFAULT_LIBRARY: Final = "libnvidia-ml.so.1"
NVML_SUCCESS: Final = 0
NVML_ERROR_INSUFFICIENT_SIZE: Final = 7
NVML_VALUE_NOT_AVAILABLE: Final = (1 << 64) - 1
MAX_DEVICES: Final = 64
MAX_PROCESSES: Final = 4096  # per device: more than any driver shows; a larger count is an answer we refuse
FIRST_ROOM: Final = 64
SIZE_RETRIES: Final = 4


class NvmlError(Exception):
    """NVML could not be loaded or answered an error (the message names the call and NVML's own words)."""


class ProcessInfo(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class Nvml:
    """One loaded ``libnvidia-ml``; ``processes()`` reads every GPU's compute processes."""

    def __init__(self, library: str = DEFAULT_LIBRARY, loader: Callable[[str], ctypes.CDLL] = ctypes.CDLL) -> None:
        self.library = library
        self._loader = loader
        self._lib: ctypes.CDLL | None = None
        self._lock = threading.Lock()
        self._hidden: set[int] = set()

    def processes(self) -> list[ProcessUsage]:
        """Every compute process on every GPU with the memory it holds; NvmlError when NVML cannot tell."""
        with self._lock:
            lib = self._open()
            count = ctypes.c_uint(0)
            check_rc(lib, lib.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount_v2")
            if count.value > MAX_DEVICES:
                raise NvmlError(f"nvmlDeviceGetCount_v2 says {count.value} GPUs (more than {MAX_DEVICES})")
            usage: list[ProcessUsage] = []
            for index in range(count.value):
                handle = ctypes.c_void_p()
                check_rc(
                    lib,
                    lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)),
                    f"nvmlDeviceGetHandleByIndex_v2({index})",
                )
                usage.extend(self._device_processes(lib, index, handle))
            return usage

    def _device_processes(self, lib: ctypes.CDLL, index: int, handle: ctypes.c_void_p) -> list[ProcessUsage]:
        room = FIRST_ROOM
        for _ in range(SIZE_RETRIES):
            infos = (ProcessInfo * room)()
            count = ctypes.c_uint(room)
            rc = lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), infos)
            if rc == NVML_ERROR_INSUFFICIENT_SIZE:
                if count.value > MAX_PROCESSES:
                    raise NvmlError(f"GPU {index}: NVML asks room for {count.value} processes (over {MAX_PROCESSES})")
                room = max(room * 2, count.value + 8)  # some room for processes that start meanwhile
                continue
            check_rc(lib, rc, f"nvmlDeviceGetComputeRunningProcesses_v3(GPU {index})")
            return [u for info in infos[: min(count.value, room)] if (u := self._usage(index, info)) is not None]
        raise NvmlError(f"GPU {index}: the process table kept growing past the room given ({room})")

    def _usage(self, index: int, info: ProcessInfo) -> ProcessUsage | None:
        pid = int(info.pid)
        if pid <= 0:
            return None
        if info.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE:
            if pid not in self._hidden:
                self._hidden.add(pid)
                log.warning(
                    "memory watch: NVML does not show the memory of pid %d on GPU %d (NVML_VALUE_NOT_AVAILABLE: "
                    "flexnpud needs the host's pid namespace and the driver's permission); it is not judged",
                    pid,
                    index,
                )
            return None
        return ProcessUsage(index, 0, pid, clamp_bytes(int(info.usedGpuMemory)))

    def _open(self) -> ctypes.CDLL:
        if self._lib is not None:
            return self._lib
        try:
            lib = self._loader(self.library)
        except OSError as exc:
            raise NvmlError(f"cannot load {self.library} ({exc})") from exc
        try:
            for name in (
                "nvmlInit_v2",
                "nvmlShutdown",
                "nvmlDeviceGetCount_v2",
                "nvmlDeviceGetHandleByIndex_v2",
                "nvmlDeviceGetComputeRunningProcesses_v3",
            ):
                getattr(lib, name).restype = ctypes.c_int
            lib.nvmlErrorString.restype = ctypes.c_char_p
            lib.nvmlErrorString.argtypes = [ctypes.c_int]
        except AttributeError as exc:
            raise NvmlError(f"{self.library} lacks an NVML function ({exc})") from exc
        check_rc(lib, lib.nvmlInit_v2(), "nvmlInit_v2")
        self._lib = lib
        return lib

    def close(self) -> None:
        with self._lock:
            if self._lib is not None:
                self._lib.nvmlShutdown()
                self._lib = None


def check_rc(lib: ctypes.CDLL, rc: int, call: str) -> None:
    """NvmlError naming ``call``, the code and NVML's words for it, unless ``rc`` is NVML_SUCCESS."""
    if rc == NVML_SUCCESS:
        return
    words = lib.nvmlErrorString(rc) or b""
    raise NvmlError(f"{call} returned {rc} ({words.decode('utf-8', errors='replace') or 'no message'})")
