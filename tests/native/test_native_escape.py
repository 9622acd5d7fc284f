"""A pod cannot switch libflexnpu off from inside, and forked processes stay in the pod's account.

What is still open, and why (also in shim/native/SYMBOLS.md): a process that issues the driver's ioctls itself, or
one that finds a library's function by reading its ELF symbol table instead of asking dlsym, is not gated by an
interposer; the node daemon's per-process memory watch (npu-smi / NVML) is the backstop for those.
"""

from __future__ import annotations

import sys

import pytest
from native_helpers import MIB, Pod, fake_device, run


def test_unsetenv_disable_variable_and_real_symbol_lookups_stay_capped(pod: Pod) -> None:
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=8 * MIB)
    report = run([pod.program("acl_prog"), "escape", str(6 * MIB)], pod.env("pod-a", {"FLEXNPU_SHIM_DISABLE": "1"}))
    assert report.pop("after_unsetenv") == "0"  # the first 6 MiB fit the 8 MiB cap
    assert report == {
        "rtld_default": "207001",  # dlsym(RTLD_DEFAULT, "aclrtMalloc")
        "rtld_next": "207001",  # dlsym(RTLD_NEXT, ...) from the executable
        "dlopen_handle": "207001",  # dlopen("libascendcl.so") + dlsym(handle)
        "runtime_handle": "207001",  # the runtime layer's rtMalloc through its own handle
        "deepbind_handle": "207001",  # dlopen(..., RTLD_DEEPBIND) + dlsym(handle)
    }
    assert fake_device(pod.device)[1] == 6 * MIB
    assert slot.get("denied_allocs") == 5


def test_python_isolated_mode_and_the_disable_variable_change_nothing(pod: Pod) -> None:
    """A ctypes program under ``python -I`` with FLEXNPU_SHIM_DISABLE=1: the preload still caps it."""
    pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=4 * MIB)
    code = (
        "import ctypes\n"
        "acl = ctypes.CDLL('libascendcl.so')\n"
        "p = ctypes.c_void_p()\n"
        "print('small=%d' % acl.aclrtMalloc(ctypes.byref(p), ctypes.c_size_t(2 << 20), 0))\n"
        "print('large=%d' % acl.aclrtMalloc(ctypes.byref(p), ctypes.c_size_t(3 << 20), 0))\n"
    )
    report = run([sys.executable, "-I", "-c", code], pod.env("pod-a", {"FLEXNPU_SHIM_DISABLE": "1"}))
    assert report == {"small": "0", "large": "207001"}


@pytest.mark.parametrize(("bytes_each", "child_alloc"), [(3 * MIB, "0"), (5 * MIB, "207001")])
def test_forked_children_share_the_pods_account(pod: Pod, bytes_each: int, child_alloc: str) -> None:
    slot = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=8 * MIB)
    pod.grant(1, epoch=1)
    report = run([pod.program("acl_prog"), "fork", str(bytes_each)], pod.env("pod-a"))
    assert report["parent_alloc"] == "0"
    assert report["child_alloc"] == child_alloc  # parent + child past 8 MiB: refused, pod-wide
    assert report["child_launch"] == "0"
    assert report["child_exit"] == "0"
    assert report["parent_free"] == "0"
    assert slot.get("mem_used_bytes") == 0
    assert fake_device(pod.device)[1] == 0
