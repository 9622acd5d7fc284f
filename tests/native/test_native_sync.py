"""An application's synchronise ends libflexnpu's open timing interval, so a host gap after it is not device time.

A regression test of the fix in shim/native/gate.c (fx_harvest closes the open interval at every synchronise, not
only a device-wide one): it fails on the code before it. The ground truth is the fake device's busy time for the
pid (what it really ran), not a host clock. The want a synchronise withdraws is tested in test_native_grant.py.
"""

from __future__ import annotations

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
