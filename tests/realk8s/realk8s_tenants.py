"""Real tenants in the suite's containers: C programs on the fake AscendCL (tests/native/workload_prog.c), with
libflexnpu reaching them the way it reaches a pod's processes (the read-only /etc/ld.so.preload the node
component mounts), metered by the fake device's own kernel log, which nothing in the runtime reads.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from realk8s_cri import ContainerRecord, container_log, mounts_applied
from realk8s_procs import wait_for

from flexnpu import names
from flexnpu.bench.native_share import busy_per_window, read_kernels

REPO = Path(__file__).resolve().parents[2]
# Saturating batch work: 8 s of kernels of 1-5 ms, up to 8 between synchronisations, no host gaps.
SATURATING = ("batch", "8", "{seed}", "1000", "5000", "8", "0")


def build_native(directory: Path) -> Path:
    """libflexnpu.so, the fake device libraries and the workload program, built into ``directory``."""
    subprocess.run(
        ["make", "-s", "-C", str(REPO / "shim" / "native"), f"BUILD={directory}", "all", "fakes"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return directory


def workload_container(
    native: Path, device: Path, argv: Sequence[str], start: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a workload container. Nothing in it asks for enforcement. With ``start``, the
    program launches its first kernel only once that file exists (``open_gate``): pods that a loaded kubelet starts
    seconds apart still run their work side by side."""
    env = {"FLEXNPU_FAKEDEV": str(device), "LD_LIBRARY_PATH": str(native / "fake")}
    if start is not None:
        env["WORKLOAD_START_FILE"] = str(start)
    return [str(native / "workload_prog"), *argv], env


def open_gate(start: Path) -> None:
    """Let the gated tenants of ``workload_container`` launch their kernels."""
    start.touch()


def enforcement_problems(records: Path, record: ContainerRecord, flexnpu_id: str) -> list[str]:
    """What keeps libflexnpu from gating the container: a mount the CRI did not apply as the interposer needs it
    (the preload file and the library read-only, the shim directory read-only, the registration's own slot
    read-write), or the interposer saying it runs ungated or pacing without flexnpud. The CRI writes its record of
    the mounts in the container's process just before the exec, so after the pid: it is waited for."""
    try:
        mounts = wait_for(f"the CRI's mounts of {record.container_id}", lambda: mounts_applied(records, record), 30)
    except TimeoutError:
        return ["the CRI recorded no mounts (not started?)"]
    applied = {m["target"]: m for m in mounts["applied"]}
    wanted = {
        names.PRELOAD_POD_FILE: True,
        names.INTERPOSER_POD_PATH: True,
        names.SHIM_SOCKET_DIR: True,
        f"{names.SHIM_SOCKET_DIR}/{names.slot_file(flexnpu_id)}": False,
    }
    problems = [
        f"{target}: {applied.get(target, 'not mounted')} (want readOnly={ro})"
        for target, ro in wanted.items()
        if applied.get(target, {}).get("readOnly") is not ro
    ]
    log = container_log(record)
    if "ungated" in log or "pacing locally" in log:
        problems.append(f"the interposer said: {log[-500:]}")
    return problems


def device_time(device: Path, pids: Mapping[int, str], trim_ns: int = 500_000_000) -> dict[str, int]:
    """Each tenant's device time (ns) in the span where all of them ran (trimmed at both ends)."""
    kernels = [k for k in read_kernels(device) if k.pid in pids]
    seen = {k.pid for k in kernels}
    if seen != set(pids):
        raise AssertionError(f"no kernels on the device from {sorted(set(pids) - seen)}")
    start = max(min(k.start_ns for k in kernels if k.pid == pid) for pid in pids) + trim_ns
    end = min(max(k.end_ns for k in kernels if k.pid == pid) for pid in pids) - trim_ns
    if end - start < 2_000_000_000:
        raise AssertionError(f"the tenants overlapped for only {(end - start) / 1e9:.2f} s")
    return {name: values[0] for name, values in busy_per_window(kernels, pids, start, end, end - start).items()}
