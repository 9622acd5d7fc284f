"""Who is on the other end of the grant socket: peer credentials and the pod UID of the peer's cgroup.

The kernel vouches for the peer's pid (SO_PEERCRED, in flexnpud's pid namespace: the daemon runs with the host's
pid namespace), and kubelet names every pod's cgroup after the pod UID, so ``/proc/<pid>/cgroup`` tells which pod
a process belongs to without trusting anything the process says. The proc root is a parameter so that tests
point it at a fake tree.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

# cgroupfs driver: .../kubepods/burstable/pod<uid>/<container>; systemd driver:
# .../kubepods-burstable-pod<uid with underscores>.slice/cri-containerd-<id>.scope
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


@dataclass(frozen=True)
class Peer:
    """A connected process: what the kernel says (pid, uid, gid) and the pod its cgroup names ("" for none)."""

    pid: int
    uid: int
    gid: int
    pod_uid: str

    def describe(self) -> str:
        return f"pid {self.pid} (uid {self.uid}, pod {self.pod_uid or 'none'})"


class IdentityError(Exception):
    """The peer may not use the registration it named."""


def peer_of(sock: socket.socket, proc_root: Path) -> Peer:
    """The peer of a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid=pid, uid=uid, gid=gid, pod_uid=pod_uid_of(pid, proc_root))


def pod_uid_of(pid: int, proc_root: Path) -> str:
    """The pod UID in the cgroup of ``pid`` ("" when the process is in no pod or is gone)."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return pod_uid_in(text)


def pod_uid_in(cgroup_text: str) -> str:
    match = _POD_UID.search(cgroup_text)
    return match.group(1).replace("_", "-") if match else ""


def check_peer(peer: Peer, flexnpu_id: str, pod_uid: str) -> None:
    """IdentityError unless ``peer`` may use registration ``flexnpu_id`` bound to ``pod_uid``.

    A registration without a pod UID (registered by hand, as with the seed's register.sh) accepts any local
    peer: whoever can reach the socket directory may use it.
    """
    if pod_uid and peer.pod_uid != pod_uid:
        raise IdentityError(
            f"registration {flexnpu_id!r} belongs to pod {pod_uid}, but the caller is {peer.describe()}"
        )
