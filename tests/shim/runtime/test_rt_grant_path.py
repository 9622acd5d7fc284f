"""The grant path: flexnpud's GrantServer and the in-pod GrantClient over a real unix socket, real processes."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from rt_helpers import POD_A, POD_B, ManualClock, fake_cgroup, registration, wait_for

from flexnpu.priority import Priority
from flexnpu.shim.grant.identity import pod_uid_in
from flexnpu.shim.grant.server import GrantServer
from flexnpu.shim.runtime.grant_client import GrantClient, Lease

ChildFactory = Callable[..., subprocess.Popen[str]]
MakeServer = Callable[..., GrantServer]

ONE_GRANT = """
import sys
from flexnpu.shim.runtime.grant_client import GrantClient, GrantRefusedError
sys.stdin.readline()  # the test writes the fake cgroup of this pid first
client = GrantClient({socket!r}, {flexnpu_id!r}, 0.5)
try:
    lease = client.acquire()
except GrantRefusedError as exc:
    print("refused", exc.code, exc, flush=True)
    sys.exit(3)
client.release(1500)
client.ping()  # the release is processed before we leave
client.close()
print("granted", lease.budget_us, flush=True)
"""


def run_one_grant(
    child: ChildFactory, proc_root: Path, grant_socket: str, flexnpu_id: str, pod_uid: str | None
) -> tuple[int, str]:
    proc = child(ONE_GRANT.format(socket=grant_socket, flexnpu_id=flexnpu_id))
    if pod_uid is not None:
        fake_cgroup(proc_root, proc.pid, pod_uid)
    out, err = proc.communicate("go\n", timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode, out


def test_a_process_of_the_registered_pod_gets_a_grant(
    make_grant_server: MakeServer, child: ChildFactory, proc_root: Path, grant_socket: str
) -> None:
    clock = ManualClock()
    server = make_grant_server([registration("a", pod_uid=POD_A)], clock_us=clock, timer=False)
    rc, out = run_one_grant(child, proc_root, grant_socket, "a", POD_A)
    assert rc == 0, out
    assert out.startswith("granted 2000")
    figures = server.stats()["a"]
    assert figures["grants"] == 1
    # It reported 1500 µs but held the grant for no time at all (the clock did not move): an over-report is
    # charged only up to the time held plus the grace.
    assert figures["device_time_us"] == server.policy.charge_grace_us


def test_a_pod_naming_itself_not_its_registration_is_matched_by_its_cgroup(
    make_grant_server: MakeServer, child: ChildFactory, proc_root: Path, grant_socket: str
) -> None:
    # Allocate injects the pod's namespace/name; the operator registered the claim's id with the pod's UID.
    server = make_grant_server(
        [registration("vnc.ns.claim-a.1234abcd", pod_uid=POD_A), registration("vnc.ns.claim-b.5678abcd", pod_uid=POD_B)]
    )
    rc, out = run_one_grant(child, proc_root, grant_socket, "ns/pod-b", POD_B)
    assert rc == 0, out
    assert server.stats()["vnc.ns.claim-b.5678abcd"]["grants"] == 1
    assert server.stats()["vnc.ns.claim-a.1234abcd"]["grants"] == 0
    rc, out = run_one_grant(child, proc_root, grant_socket, "ns/pod-c", None)
    assert rc == 3 and out.startswith("refused unknown_registration"), out


def test_a_process_of_another_pod_is_refused(
    make_grant_server: MakeServer, child: ChildFactory, proc_root: Path, grant_socket: str
) -> None:
    server = make_grant_server([registration("a", pod_uid=POD_A)])
    rc, out = run_one_grant(child, proc_root, grant_socket, "a", POD_B)
    assert rc == 3
    assert out.startswith("refused identity_mismatch")
    assert POD_A in out and POD_B in out
    assert server.stats()["a"]["grants"] == 0


def test_a_process_in_no_pod_is_refused_a_pod_bound_registration(
    make_grant_server: MakeServer, child: ChildFactory, proc_root: Path, grant_socket: str
) -> None:
    make_grant_server([registration("a", pod_uid=POD_A)])
    rc, out = run_one_grant(child, proc_root, grant_socket, "a", None)
    assert rc == 3
    assert "pod none" in out


def test_a_registration_without_pod_uid_accepts_any_local_peer(
    make_grant_server: MakeServer, child: ChildFactory, proc_root: Path, grant_socket: str
) -> None:
    make_grant_server([registration("manual")])
    rc, out = run_one_grant(child, proc_root, grant_socket, "manual", None)
    assert rc == 0, out


def test_an_unknown_registration_is_refused_with_a_clear_error(
    make_grant_server: MakeServer, child: ChildFactory, proc_root: Path, grant_socket: str
) -> None:
    make_grant_server([registration("a")])
    rc, out = run_one_grant(child, proc_root, grant_socket, "nope", None)
    assert rc == 3
    assert out.startswith("refused unknown_registration")
    assert "register it first" in out


RESTART_CLIENT = """
from flexnpu.shim.runtime.grant_client import GrantClient
client = GrantClient({socket!r}, "a", 0.5, reconnect_interval_s=0.05, local_slice_us=500)
state = None
while True:
    lease = client.acquire()
    now = "local" if lease.local else ("reconnected" if client.reconnects else "connected")
    if now != state:
        print(now, flush=True)
        state = now
    client.release(200, want=False)
    if state == "reconnected":
        break
client.close()
"""


def test_client_paces_locally_while_the_server_restarts_then_reconnects(
    make_grant_server: MakeServer, child: ChildFactory, grant_socket: str
) -> None:
    first = make_grant_server([registration("a")])
    proc = child(RESTART_CLIENT.format(socket=grant_socket))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "connected"
    first.stop()
    assert proc.stdout.readline().strip() == "local"
    second = make_grant_server([registration("a")])
    assert proc.stdout.readline().strip() == "reconnected"
    assert proc.wait(timeout=30) == 0
    wait_for(lambda: second.stats()["a"]["grants"] >= 1, "a grant from the restarted server")


def test_high_priority_waiter_revokes_the_holder(make_grant_server: MakeServer, grant_socket: str) -> None:
    make_grant_server(
        [registration("batch", units=5), registration("urgent", units=5, priority=Priority.HIGH)],
        revoke_grace_us=60_000_000,
    )  # no reclaim: the grant must move only by the release
    batch = GrantClient(grant_socket, "batch", 0.5)
    urgent = GrantClient(grant_socket, "urgent", 0.5)
    got: list[Lease] = []
    try:
        batch.acquire()
        waiter = threading.Thread(target=lambda: got.append(urgent.acquire()))
        waiter.start()
        wait_for(batch.revoked, "the revoke at the holder's next launch boundary")
        assert not got
        batch.release(100)
        waiter.join(timeout=20)
        assert len(got) == 1
    finally:
        batch.close()
        urgent.close()


def test_a_silent_holder_loses_its_grant(make_grant_server: MakeServer, grant_socket: str) -> None:
    make_grant_server([registration("idle", units=5), registration("busy", units=5)])
    idle = GrantClient(grant_socket, "idle", 0.5)
    busy = GrantClient(grant_socket, "busy", 0.5)
    try:
        idle.acquire()  # and never launches nor releases again
        lease = busy.acquire()
        assert not lease.local
    finally:
        idle.close()
        busy.close()


def test_extension_without_drain_when_nobody_else_waits(make_grant_server: MakeServer, grant_socket: str) -> None:
    clock = ManualClock()
    server = make_grant_server([registration("solo")], clock_us=clock, timer=False)
    client = GrantClient(grant_socket, "solo", 0.5)
    try:
        first = client.acquire()
        clock.now_us += 2000
        renewed = client.extend(1500)  # under-reports: charged the 2000 µs it held the card
        assert renewed is not None and renewed.seq != first.seq
        clock.now_us += 500
        client.release(500)
        client.ping()
    finally:
        client.close()
    assert server.stats()["solo"]["device_time_us"] == 2500


def test_malformed_message_closes_only_that_connection(make_grant_server: MakeServer, grant_socket: str) -> None:
    make_grant_server([registration("a")])
    good = GrantClient(grant_socket, "a", 0.5)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        raw.connect(grant_socket)
        raw.sendall(b"{not json\n")
        raw.settimeout(10)
        assert raw.recv(100) == b""
        assert not good.acquire().local
    finally:
        raw.close()
        good.close()


def test_unregistering_ends_the_session_and_the_client_paces_locally(
    make_grant_server: MakeServer, grant_socket: str
) -> None:
    server = make_grant_server([registration("a"), registration("b")])
    client = GrantClient(grant_socket, "a", 0.5)
    try:
        client.acquire()
        server.set_registrations([registration("b")])
        wait_for(lambda: client.revoked() or not client.connected, "the session to end")
        client.release(100)
        assert client.acquire().local
    finally:
        client.close()


@pytest.mark.parametrize(
    ("cgroup", "pod_uid"),
    [
        (
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11111111_2222_3333_4444_555555555555"
            ".slice/cri-containerd-ab.scope\n",
            POD_A,
        ),
        ("12:memory:/kubepods/burstable/pod99999999-8888-7777-6666-555555555555/0123abcd\n", POD_B),
        ("0::/user.slice/user-0.slice/session-1.scope\n", ""),
        ("", ""),
    ],
)
def test_pod_uid_from_cgroup(cgroup: str, pod_uid: str) -> None:
    assert pod_uid_in(cgroup) == pod_uid
