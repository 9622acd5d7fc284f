"""What an application's synchronise does to libflexnpu's accounting: it ends the open timing interval, and it
withdraws a want that a launch near the deadline set.

Both are regression tests of fixes in shim/native/gate.c (fx_harvest, withdraw_early_want): each fails on the code
before its fix. The ground truth is the fake device's busy time per pid (what it really ran), not a host clock.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from native_helpers import MIB, Pod, fake_device, run

GAP_MS = 200  # host time between the two bursts, far longer than their kernels (2 x 3 x 5 ms)
# What event timing may add to the device's busy time: the start event is stamped when recorded (before the kernel
# is queued) and the end event after the synchronise returns. A few ms even on a loaded machine; the gap is 200.
SLACK_NS = 50_000_000


@pytest.mark.parametrize(
    ("program", "sync"),
    [
        ("acl_prog", "stream"),  # aclrtSynchronizeStream
        ("acl_prog", "event"),  # aclrtRecordEvent + aclrtSynchronizeEvent
        ("acl_prog", "rt"),  # rtStreamSynchronize
        ("cuda_prog", "stream"),  # cuStreamSynchronize
        ("cuda_prog", "event"),  # cuEventRecord + cuEventSynchronize
    ],
)
def test_a_synchronise_ends_the_timing_interval_so_a_host_gap_is_not_device_time(
    pod: Pod, program: str, sync: str
) -> None:
    """Three kernels (fewer than the eight a timing interval holds), synchronise, 200 ms on the host, three more,
    synchronise. Left open at the first synchronise, the interval would be closed by a later launch and time the
    gap as device time: used_ns about 230 ms for 30 ms of kernels."""
    a = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=64 * MIB)
    pod.grant(1, epoch=1)  # no end: the gate never waits, nothing but the events is measured
    out = run([pod.program(program), "gap", "3", "5000", str(GAP_MS), sync], pod.env("pod-a"))
    assert (out["launched"], out["synced"]) == ("6", "2")
    (client,) = fake_device(pod.device)[2].values()
    assert client.launches == 6
    used = a.get("used_ns")
    assert client.busy_ns <= used <= client.busy_ns + SLACK_NS, (used, client.busy_ns)


# Launches one kernel of 1 ms, says so, waits for a line; synchronises its stream, says so, waits for a line.
LAUNCH_THEN_SYNC = """
import ctypes, sys
acl = ctypes.CDLL("libascendcl.so")
stream = ctypes.c_void_p()
acl.aclrtCreateStream(ctypes.byref(stream))
us = ctypes.c_uint64(1000)
print("launched=%d" % (acl.aclrtLaunchKernel(None, 1, ctypes.byref(us), ctypes.c_size_t(8), stream) == 0), flush=True)
sys.stdin.readline()
print("synced=%d" % (acl.aclrtSynchronizeStream(stream) == 0), flush=True)
sys.stdin.readline()
"""


def test_a_synchronise_after_the_deadline_withdraws_the_early_want(pod: Pod) -> None:
    """A launch near the deadline sets want=1 while it still holds the card. The grant then ends (its work ran past
    the deadline) before the application synchronises: once synchronised the tenant is idle, and its want must go,
    or the daemon would queue an idle tenant again and again. The deadline is published by the test, so which side
    of it the synchronise falls on does not depend on the machine's speed."""
    a = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=64 * MIB)
    pod.grant(1, epoch=1, deadline_ns=time.monotonic_ns() + 50_000_000_000)
    env = pod.env("pod-a", {"FLEXNPU_RENEW_US": "100000000"})  # 100 s: the launch is "near" the 50 s deadline
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH_THEN_SYNC], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "launched=1"
        assert (a.get("want"), a.get("doorbell")) == (1, 1)  # asked early for the next grant
        pod.grant(1, epoch=1, deadline_ns=time.monotonic_ns() - 1)  # the same grant, now over
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "synced=1"
        assert a.get("want") == 0  # synchronised and idle past the deadline: nothing to ask for
        assert a.get("doorbell") == 1  # and it did not ask again
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 0
    assert a.get("want") == 0
