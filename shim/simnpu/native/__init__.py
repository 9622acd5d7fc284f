"""The simulated node's device libraries: a fake ``libascendcl.so`` (over a fake ``libruntime.so``, as CANN is
layered), a fake ``libcuda.so.1`` and a fake ``libnvidia-ml.so.1`` (the process table flexnpud's memory watch
reads on CUDA nodes), in C beside this file, over one simulated card in shared memory
(``fakedev.h``: one non-preemptive engine shared by every process, a memory capacity it enforces itself, and a
log of every kernel's device start and end with the launching process).

Real function names, signatures and error codes, so that ``libflexnpu.so`` interposes on them as on the vendor's:
``flexnpu demo`` runs its tenants on them, and the native tests and benchmarks too. A kernel's duration rides in
its first argument, which only the fake reads: nothing above it (flexnpud, libflexnpu) knows any duration.

The project's install builds them (setup.py's ``build_py`` runs this folder's Makefile): into ``lib/`` here for a
wheel or ``pip install .``, into ``build/`` for ``pip install -e .``. ``library_dir()`` finds them.

The kernel log is this module's reader (``read_device``): the meter of the demo, independent of the scheduler.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ASCENDCL = "libascendcl.so"
NVML = "libnvidia-ml.so.1"
LIBRARIES = ("libruntime.so", ASCENDCL, "libcuda.so.1", NVML)
CANDIDATE_DIRS = (HERE / "lib", HERE / "build")
# The fake device's configuration (fakedev.c reads them when a process first uses the device).
ENV_DEVICE = "FLEXNPU_FAKEDEV"  # the shared file of the simulated card
ENV_MEMORY_MIB = "FLEXNPU_FAKEDEV_MIB"  # its memory capacity (default 65536)

# Layout of the device file (fakedev.h).
MAGIC = 0x56444B46
STATE_READY = 2
HEADER = struct.Struct("<IIQQQQQ")  # magic, state, capacity, used, busy_until_ns, launches, log_count
CLIENTS_AT, CLIENTS, CLIENT = 512, 64, struct.Struct("<iI7Q")
LOG_AT, LOG_CAP, LOG_RECORD = 8192, 1 << 18, struct.Struct("<iIQQ")


class LibrariesMissing(FileNotFoundError):
    """The fake device libraries were not built (no C compiler at install time, or the build failed)."""


def find_library_dir(candidates: Iterable[Path] = CANDIDATE_DIRS) -> Path | None:
    """The first candidate folder that holds every fake library, or None."""
    for folder in candidates:
        if all((folder / name).is_file() for name in LIBRARIES):
            return folder
    return None


def library_dir(candidates: Iterable[Path] = CANDIDATE_DIRS) -> Path:
    """The installed fake libraries' folder; LibrariesMissing (with the command that builds them) when none."""
    candidates = tuple(candidates)
    found = find_library_dir(candidates)
    if found is None:
        raise LibrariesMissing(
            f"the simulated node's device libraries are not built (looked in "
            f"{', '.join(str(p) for p in candidates)}): install a C compiler and make, then reinstall "
            f"(pip install .) or run `make -C {HERE}`"
        )
    return found


@dataclass(frozen=True)
class Kernel:
    """One kernel as the device ran it: the launching process, device start and end (CLOCK_MONOTONIC ns)."""

    pid: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class DeviceState:
    """What the device file says: capacity and use of memory, every kernel it logged."""

    capacity_bytes: int
    used_bytes: int
    kernels: tuple[Kernel, ...]


class DeviceLogError(ValueError):
    """The device file is not a ready fake device, or its kernel log wrapped (the run was too long)."""


def parse_device(data: bytes) -> DeviceState:
    """The device file's contents, parsed (pure)."""
    if len(data) < LOG_AT:
        raise DeviceLogError(f"{len(data)} bytes: not a fake device file")
    magic, state, capacity, used, _busy, _launches, count = HEADER.unpack_from(data, 0)
    if magic != MAGIC or state != STATE_READY:
        raise DeviceLogError("not a ready fake device file")
    if count > LOG_CAP:
        raise DeviceLogError(f"the device logged {count} kernels, more than its ring of {LOG_CAP} holds")
    end = LOG_AT + count * LOG_RECORD.size
    if len(data) < end:
        raise DeviceLogError("the kernel log is cut short")
    kernels = tuple(Kernel(pid, s, e) for pid, _, s, e in LOG_RECORD.iter_unpack(data[LOG_AT:end]))
    return DeviceState(capacity, used, kernels)


def read_device(path: Path) -> DeviceState:
    return parse_device(path.read_bytes())


def busy_until(kernels: Iterable[Kernel], tenant_of: Mapping[int, str], at_ns: int) -> dict[str, float]:
    """Device time (µs) each tenant's kernels ran before ``at_ns`` (a kernel running at that instant in part)."""
    busy = {name: 0.0 for name in tenant_of.values()}
    for k in kernels:
        name = tenant_of.get(k.pid)
        if name is not None and k.start_ns < at_ns:
            busy[name] += (min(k.end_ns, at_ns) - k.start_ns) / 1e3
    return busy


def kernels_until(kernels: Iterable[Kernel], tenant_of: Mapping[int, str], at_ns: int) -> dict[str, float]:
    """Kernels of each tenant that ended by ``at_ns``."""
    count = {name: 0.0 for name in tenant_of.values()}
    for k in kernels:
        name = tenant_of.get(k.pid)
        if name is not None and k.end_ns <= at_ns:
            count[name] += 1
    return count
