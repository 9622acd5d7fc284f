"""flexnpud's NVML memory source on the fake libnvidia-ml, over the fake device that the fake libcuda allocates on.

The holders are real processes that allocate through the fake libcuda with no interposer loaded: what a program
that bypasses libflexnpu (its own ioctls, a static binary) looks like to the driver. The watch must find them
through NVML's process table alone and kill only the pod past its cap.

The fake NVML maps its device file once per process, as a driver sees one set of GPUs: every test here shares one
device file (``nvml_device``), and each holder process is told to use it.
"""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from native_helpers import MIB

from flexnpu.registration import Registration
from flexnpu.shim.daemon import nvml
from flexnpu.shim.daemon.memwatch import MemoryWatch, NvmlSource
from flexnpu.shim.daemon.nvml import Nvml, NvmlError

POD_A = "0b9c4e1a-1111-4a2b-8c3d-aaaaaaaaaaaa"
POD_B = "7f3e2d1c-2222-4b5c-9d6e-bbbbbbbbbbbb"
HOLDER = """
import ctypes, sys
cuda = ctypes.CDLL(sys.argv[1])
assert cuda.cuInit(0) == 0
ptr = ctypes.c_ulonglong()
print(f"rc={cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(int(sys.argv[2])))}", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def nvml_device(native_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("nvml") / "fakedev"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEXNPU_FAKEDEV", str(path))
        mp.setenv("FLEXNPU_FAKEDEV_MIB", "1024")
        yield path


@pytest.fixture
def reader(native_build: Path, nvml_device: Path) -> Iterator[Nvml]:
    reading = Nvml(str(native_build / "fake" / "libnvidia-ml.so.1"))
    yield reading
    reading.close()


@pytest.fixture
def holders(native_build: Path, nvml_device: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def hold(native_build: Path, started: list[subprocess.Popen[str]], mib: int) -> subprocess.Popen[str]:
    """A process that allocates ``mib`` MiB through the fake libcuda (no interposer) and keeps it."""
    library = str(native_build / "fake" / "libcuda.so.1")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, library, str(mib * MIB)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(child)
    assert child.stdout is not None and child.stdout.readline().strip() == "rc=0"
    return child


def in_pod(proc_root: Path, pods: dict[int, str]) -> Path:
    """``<proc_root>/<pid>/cgroup`` naming each pid's pod (the systemd cgroup v2 layout kubelet writes)."""
    for pid, pod in pods.items():
        (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
        slice_name = f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice"
        (proc_root / str(pid) / "cgroup").write_text(
            f"0::/kubepods.slice/kubepods-besteffort.slice/{slice_name}/cri-containerd-0a1b.scope\n", encoding="utf-8"
        )
    return proc_root


def reg(flexnpu_id: str, pod: str, memory_mib: int) -> Registration:
    return Registration(flexnpu_id, "pod", npu=0, aicore_alloc=5, memory_alloc=memory_mib, pod_uid=pod)


def test_nvml_lists_each_live_process_with_the_memory_the_device_counts(
    native_build: Path, reader: Nvml, holders: list[subprocess.Popen[str]]
) -> None:
    big, small = hold(native_build, holders, 48), hold(native_build, holders, 8)
    seen = {(p.npu, p.chip, p.pid): p.used_bytes for p in reader.processes()}
    assert seen[(0, 0, big.pid)] == 48 * MIB and seen[(0, 0, small.pid)] == 8 * MIB
    big.kill()
    big.wait()
    assert big.pid not in {p.pid for p in reader.processes()}  # the driver lists live processes only


def test_a_table_larger_than_the_first_room_is_read_whole(
    native_build: Path, reader: Nvml, holders: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = {hold(native_build, holders, 1 + i).pid: (1 + i) * MIB for i in range(3)}
    monkeypatch.setattr(nvml, "FIRST_ROOM", 1)  # NVML answers INSUFFICIENT_SIZE with the count it needs
    seen = {p.pid: p.used_bytes for p in reader.processes()}
    assert {pid: seen.get(pid) for pid in mine} == mine


def test_the_watch_kills_only_the_pod_that_bypassed_the_interposer_past_its_cap(
    native_build: Path, reader: Nvml, holders: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    over, within = hold(native_build, holders, 48), hold(native_build, holders, 8)
    proc_root = in_pod(tmp_path / "proc", {over.pid: POD_A, within.pid: POD_B})
    regs = [reg("a", POD_A, memory_mib=16), reg("b", POD_B, memory_mib=16)]
    watch = MemoryWatch(NvmlSource(reader, proc_root), lambda: regs, enforce="kill", proc_root=proc_root)
    verdicts = {v.flexnpu_id: v for v in watch.poll()}
    assert (verdicts["a"].used_bytes, verdicts["a"].over_cap, verdicts["a"].pids) == (48 * MIB, True, (over.pid,))
    assert (verdicts["b"].used_bytes, verdicts["b"].over_cap) == (8 * MIB, False)
    assert over.wait(timeout=30) == -9 and within.poll() is None and watch.killed == [over.pid]


def test_memory_nvml_does_not_show_is_not_judged_and_is_logged_once(
    native_build: Path,
    reader: Nvml,
    holders: list[subprocess.Popen[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hidden = hold(native_build, holders, 48)
    proc_root = in_pod(tmp_path / "proc", {hidden.pid: POD_A})
    monkeypatch.setenv("FLEXNPU_FAKE_NVML_HIDE_MEMORY", "1")  # usedGpuMemory = NVML_VALUE_NOT_AVAILABLE
    watch = MemoryWatch(
        NvmlSource(reader, proc_root), lambda: [reg("a", POD_A, 16)], enforce="kill", proc_root=proc_root
    )
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            (verdict,) = watch.poll()
            assert not verdict.over_cap and hidden.pid not in verdict.pids
    assert hidden.poll() is None and watch.killed == []
    assert sum(f"memory of pid {hidden.pid}" in r.getMessage() for r in caplog.records) == 1


def test_an_nvml_error_names_the_call_and_nvml_s_words(native_build: Path, reader: Nvml) -> None:
    reader.processes()  # loads and initialises NVML
    lib = ctypes.CDLL(str(native_build / "fake" / "libnvidia-ml.so.1"))
    lib.nvmlErrorString.restype = ctypes.c_char_p
    handle = ctypes.c_void_p()
    with pytest.raises(NvmlError, match=r"nvmlDeviceGetHandleByIndex_v2\(5\) returned 2 \(Invalid Argument\)"):
        nvml.check_rc(
            lib,
            lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(5), ctypes.byref(handle)),
            "nvmlDeviceGetHandleByIndex_v2(5)",
        )


def test_a_missing_library_fails_the_round_logged_once_and_the_watch_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = NvmlSource(Nvml(str(tmp_path / "libnvidia-ml.so.1")), tmp_path)
    watch = MemoryWatch(source, lambda: [reg("a", POD_A, 16)])
    with caplog.at_level(logging.ERROR):
        assert watch.poll() == [] and watch.poll() == []
    messages = [r.getMessage() for r in caplog.records if "memory caps are not watched" in r.getMessage()]
    assert len(messages) == 1 and "cannot load" in messages[0] and "libnvidia-ml.so.1" in messages[0]
