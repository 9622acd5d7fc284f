"""An application's synchronise ends libflexnpu's open timing interval, so a host gap after it is not device time.

A regression test of the fix in shim/native/gate.c (fx_harvest closes the open interval at every synchronise, not
only a device-wide one): it fails on the code before it. The ground truth is the fake device's busy time for the
pid (what it really ran), not a host clock. The want a synchronise withdraws is tested in test_native_grant.py.
"""

from __future__ import annotations

import sys

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


# The main thread launches 5 ms on its stream; a worker thread then launches 200 ms on another; the main thread
# synchronises the whole device, which returns when the worker's kernel is done.
DEVICE_SYNC_BEHIND_ANOTHER_THREAD = """
import ctypes, threading
acl = ctypes.CDLL("libascendcl.so")
def launch(us, stream):
    return acl.aclrtLaunchKernel(None, 1, ctypes.byref(ctypes.c_uint64(us)), ctypes.c_size_t(8), stream)
main_stream = ctypes.c_void_p()
acl.aclrtCreateStream(ctypes.byref(main_stream))
assert launch(5000, main_stream) == 0
queued = threading.Event()
def worker():
    stream = ctypes.c_void_p()
    acl.aclrtCreateStream(ctypes.byref(stream))
    assert launch(200000, stream) == 0
    queued.set()
    acl.aclrtSynchronizeStream(stream)
thread = threading.Thread(target=worker)
thread.start()
queued.wait()
assert acl.aclrtSynchronizeDevice() == 0
thread.join()
print("done=1")
"""


def test_a_synchronise_ends_the_interval_behind_its_launches_not_when_it_returns(pod: Pod) -> None:
    """The open interval's end event is recorded before the application's synchronise, queued behind the launches
    it times. Recorded after the synchronise returned, it was stamped then: here the main thread's 5 ms interval
    would last until the worker's 200 ms kernel ended, and the pod report about 400 ms for 205 ms of device time
    (and on any card, the host's wake-up, or a next holder's kernel started meanwhile, counted as the pod's)."""
    a = pod.add_slot("pod-a", slot_index=1, mem_cap_bytes=64 * MIB)
    pod.grant(1, epoch=1)  # no end: nothing but the events is measured
    out = run(
        [sys.executable, "-c", DEVICE_SYNC_BEHIND_ANOTHER_THREAD], pod.env("pod-a", {"FLEXNPU_INFLIGHT_US": "1000000"})
    )
    assert out["done"] == "1"
    (client,) = fake_device(pod.device)[2].values()
    assert (client.launches, client.busy_ns) == (2, 205_000_000)
    used = a.get("used_ns")
    # the worker's interval starts while the main thread's kernel runs (its stream was idle): up to 5 ms more
    assert client.busy_ns <= used <= client.busy_ns + 5_000_000 + SLACK_NS // 2, used
