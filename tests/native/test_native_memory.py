"""Pod-wide device-memory caps in libflexnpu, on the fake AscendCL and CUDA libraries.

The fake device has 1 GiB and enforces it itself; the pod's cap is far below, so every refusal seen here is
the interposer's, and the fake's ground truth shows what really got allocated.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from native_helpers import MIB, Pod, fake_device, parse, run

PROGRAMS = ["acl_prog", "cuda_prog"]
OOM = {"acl_prog": "207001", "cuda_prog": "2"}  # ACL_ERROR_RT_MEMORY_ALLOCATION, CUDA_ERROR_OUT_OF_MEMORY


def hold(pod: Pod, program: str, flexnpu_id: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start a program that allocates and holds until told; return it with its report."""
    proc = subprocess.Popen(
        [pod.program(program), *args],
        env=pod.env(flexnpu_id),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready="):
            break
    return proc, parse("".join(lines))


def live_device_bytes(pod: Pod) -> int:
    """What the fake device holds for processes that are still alive (a driver frees a process's memory when it
    ends; the fake's own counter keeps a dead client's until it is reused)."""
    return sum(c.mem_bytes for pid, c in fake_device(pod.device)[2].items() if _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0, err
    assert "freed=1" in out


@pytest.mark.parametrize("program", PROGRAMS)
def test_cap_holds_pod_wide_across_four_processes_of_four_threads(pod: Pod, program: str) -> None:
    cap = 64 * MIB
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=cap)
    procs = [
        subprocess.Popen(
            [pod.program(program), "alloc", str(MIB), "40", "4"],
            env=pod.env("pod-a"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    reports = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("ready="):
                    break
            reports.append(parse("".join(lines)))
        granted = sum(int(r["ok"]) for r in reports) * MIB
        _, used_on_device, clients = fake_device(pod.device)
        assert granted <= cap
        assert used_on_device == granted  # what the device holds: nothing got past the interposer uncounted
        assert slot.get("mem_used_bytes") == granted  # counted once (aclrtMalloc -> rtMalloc is not counted twice)
        assert slot.get("mem_peak_bytes") <= cap
        assert sum(int(r["denied"]) for r in reports) == 4 * 4 * 40 - granted // MIB
        assert slot.get("denied_allocs") == 4 * 4 * 40 - granted // MIB
        assert all(r["other"] == "0" for r in reports)
        assert granted >= cap - 16 * MIB  # refusals near the cap are transient (16 threads), not a leak
        assert sum(c.mem_bytes for c in clients.values()) == granted
    finally:
        for proc in procs:
            release(proc)
    assert slot.get("mem_used_bytes") == 0
    assert fake_device(pod.device)[1] == 0


@pytest.mark.parametrize("program", PROGRAMS)
def test_mem_info_reports_the_cap_and_what_is_left(pod: Pod, program: str) -> None:
    cap = 48 * MIB
    pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=cap)
    holder, report = hold(pod, program, "pod-a", "alloc", str(MIB), "10", "1")
    try:
        assert report["ok"] == "10"
        info = run([pod.program(program), "meminfo"], pod.env("pod-a"))
        assert info["rc"] == "0"
        assert int(info["total"]) == cap
        assert int(info["free"]) == cap - 10 * MIB
        if program == "acl_prog":  # the runtime layer's view is the slice's too
            assert (int(info["rt_total"]), int(info["rt_free"])) == (cap, cap - 10 * MIB)
        unpreloaded = run([pod.program(program), "meminfo"], pod.env("pod-a", preload=False))
        assert int(unpreloaded["total"]) == 1024 * MIB  # the card as the fake device sees it
    finally:
        release(holder)


@pytest.mark.parametrize("program", PROGRAMS)
def test_allocation_past_the_cap_returns_the_apis_oom_code(pod: Pod, program: str) -> None:
    pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=8 * MIB)
    report = run([pod.program(program), "oom", str(9 * MIB)], pod.env("pod-a"))
    codes = {k: v for k, v in report.items() if k.endswith("_rc")}
    assert codes and set(codes.values()) == {OOM[program]}
    if pod.device.exists():  # a fake library opens its device at the first device call: none reached it here
        _, used, clients = fake_device(pod.device)
        assert used == 0 and all(c.oom == 0 for c in clients.values())


def test_an_unsafe_registration_id_maps_to_the_hashed_slot_name(pod: Pod) -> None:
    flexnpu_id = "ns/pod a:0"
    pod.add_slot(flexnpu_id, slot_index=1, mem_cap_bytes=16 * MIB)
    info = run([pod.program("acl_prog"), "meminfo"], pod.env(flexnpu_id))
    assert int(info["total"]) == 16 * MIB


def test_the_only_slot_is_found_without_flexnpu_id(pod: Pod) -> None:
    pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=16 * MIB)
    info = run([pod.program("acl_prog"), "meminfo"], pod.env(None))
    assert int(info["total"]) == 16 * MIB


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_killed_processs_memory_goes_back_to_the_pod(pod: Pod, program: str) -> None:
    cap = 64 * MIB
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=cap)
    victim, report = hold(pod, program, "pod-a", "alloc", str(MIB), "40", "1")
    assert report["ok"] == "40"
    assert slot.ledger() == [(victim.pid, 40 * MIB)]  # its own entry holds what it holds
    victim.kill()
    victim.communicate(timeout=30)
    assert slot.get("mem_used_bytes") == 40 * MIB  # nobody has looked since it died
    # The next process of the pod gives the dead one's bytes back before it allocates: all 64 fit.
    survivor, report = hold(pod, program, "pod-a", "alloc", str(MIB), "64", "1")
    try:
        assert (report["ok"], report["denied"]) == ("64", "0")
        assert slot.get("reclaimed_bytes") == 40 * MIB
        assert slot.get("mem_used_bytes") == cap
        assert slot.ledger() == [(survivor.pid, cap)]
        assert live_device_bytes(pod) == cap  # what the device holds agrees: the dead process's is gone
    finally:
        release(survivor)
    assert slot.get("mem_used_bytes") == 0 and slot.ledger() == []


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_live_processs_memory_is_never_given_back(pod: Pod, program: str) -> None:
    cap = 64 * MIB
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=cap)
    first, _ = hold(pod, program, "pod-a", "alloc", str(MIB), "40", "1")
    try:
        second, report = hold(pod, program, "pod-a", "alloc", str(MIB), "40", "1")
        try:
            assert (report["ok"], report["denied"]) == ("24", "16")  # refused at the cap, after a sweep found none
            assert slot.get("reclaimed_bytes") == 0
            assert sorted(slot.ledger()) == sorted([(first.pid, 40 * MIB), (second.pid, 24 * MIB)])
            assert live_device_bytes(pod) == cap
        finally:
            release(second)
    finally:
        release(first)


def test_memory_a_process_left_at_exit_is_given_back_to_the_next_look(pod: Pod) -> None:
    cap = 64 * MIB
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=cap)
    assert run([pod.program("cuda_prog"), "exitalloc", str(MIB), "48"], pod.env("pod-a"))["ok"] == "48"
    # A framework's process exits with its pool allocated; the next process's first look at memory (as vLLM
    # sizes its cache from cuMemGetInfo before it allocates anything) sees the whole slice.
    info = run([pod.program("cuda_prog"), "meminfo"], pod.env("pod-a"))
    assert (int(info["total"]), int(info["free"])) == (cap, cap)
    assert slot.get("reclaimed_bytes") == 48 * MIB and slot.get("mem_used_bytes") == 0


def test_a_forked_child_keeps_its_own_entry_and_never_the_parents(pod: Pod) -> None:
    cap = 64 * MIB
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=cap)
    parent, report = hold(pod, "cuda_prog", "pod-a", "forkalloc", str(24 * MIB))
    try:
        assert (report["parent_rc"], report["child_ok"]) == ("0", "1")
        assert slot.get("mem_used_bytes") == 48 * MIB  # the child exited holding its 24 MiB in the account
        # Another process gives back the dead child's 24 MiB, and only those: the parent, alive, keeps its
        # entry (the child had the parent's file description of the slot; locking through it would have
        # taken the parent's entry as its own).
        other, report = hold(pod, "cuda_prog", "pod-a", "alloc", str(MIB), "64", "1")
        try:
            assert (report["ok"], report["denied"]) == ("40", "24")
            assert slot.get("reclaimed_bytes") == 24 * MIB
            assert slot.get("mem_used_bytes") == cap
            assert live_device_bytes(pod) == cap
        finally:
            release(other)
    finally:
        release(parent)
    assert slot.get("mem_used_bytes") == 0
