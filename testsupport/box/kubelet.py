"""The box as the node's kubelet: admit a bound pod through the device plugin and start its "container".

Admission walks kubelet's device-manager path over the real v1beta1 protocol (the kubelet stub):
GetPreferredAllocation then Allocate for the pod's ``huawei.com/vnpu`` units. The container is a process started
with the environment Allocate returned. Without mount namespaces the box is a container runtime that rewrites
paths instead of mounting: an environment value under a mount's container path is pointed at the mount's host
path (the runtime directory for ``PYTHONPATH``, the grant socket directory for ``FLEXNPU_SOCKET``). As kubelet
does, the process is placed in a cgroup named after the pod UID, which is how flexnpud tells pods apart on the
grant socket; the box needs a writable cgroup (v1 named hierarchy or v2) for that, and says so otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexnpu import names
from flexnpu.protos import deviceplugin_v1beta1_pb2 as api_pb
from flexnpu_testsupport.box.kube import Api
from flexnpu_testsupport.box.processes import BoxError, Child
from flexnpu_testsupport.kubeletstub import StubKubelet

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
APP = Path(__file__).with_name("container_app.py")
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


@dataclass
class Container:
    """One running "container": its pod, what Allocate gave it, its process and its progress file."""

    namespace: str
    pod: str
    pod_uid: str
    device_ids: list[str]
    env: dict[str, str]
    child: Child
    status_file: Path
    cgroup: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)

    def progress(self) -> dict[str, Any]:
        """The container's last status report ({} before its first)."""
        try:
            state: dict[str, Any] = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state


class PodCgroups:
    """Pod cgroups under one parent created for the box, removed at the end (the kubelet's cgroup manager)."""

    def __init__(self, tag: str) -> None:
        self.parent = _writable_root(tag)

    @property
    def available(self) -> bool:
        return self.parent is not None

    def for_pod(self, pod_uid: str) -> Path:
        if self.parent is None:
            raise BoxError(
                "no writable cgroup hierarchy: the box cannot give a container its pod identity "
                "(flexnpud matches grant-socket peers by the pod UID in their cgroup)"
            )
        path = self.parent / f"pod{pod_uid}"
        path.mkdir(exist_ok=True)
        return path

    def remove(self) -> None:
        if self.parent is None:
            return
        for child in sorted(self.parent.glob("pod*"), reverse=True):
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            self.parent.rmdir()


def _writable_root(tag: str) -> Path | None:
    for root in CGROUP_ROOTS:
        if not (root / "cgroup.procs").exists():
            continue
        path = root / f"flexnpu-box-{tag}"
        try:
            path.mkdir(exist_ok=True)
        except OSError:
            continue
        if (path / "cgroup.procs").exists():
            return path
        with contextlib.suppress(OSError):
            path.rmdir()
    return None


class BoxKubelet:
    """Admits pods through the device plugin and runs their containers under ``directory``."""

    def __init__(self, stub: StubKubelet, api: Api, directory: Path, extra_env: Mapping[str, str]) -> None:
        self.stub = stub
        self.api = api
        self.dir = directory
        self.extra_env = dict(extra_env)
        self.cgroups = PodCgroups(f"{os.getpid()}-{int(time.time() * 1000) % 10**8}")
        self.containers: dict[str, Container] = {}

    def admit(self, namespace: str, name: str, workload: str) -> Container:
        """Allocate the pod's units through the plugin, start its container, mark the pod Running."""
        pod = self.api.pod(namespace, name)
        units = requested_units(pod)
        ids, response = self.stub.allocate_units(units)
        env = container_env(response, self.extra_env)
        meta = pod["metadata"]
        status_file = self.dir / f"{name}.status.json"
        env.update(
            {
                "POD_NAME": name,
                "POD_NAMESPACE": namespace,
                "POD_UID": meta["uid"],
                "FLEXNPU_BOX_STATUS": str(status_file),
                "FLEXNPU_BOX_WORKLOAD": workload,
            }
        )
        cgroup = self.cgroups.for_pod(meta["uid"])
        argv = [
            "/bin/sh",
            "-c",
            'echo $$ > "$0" && exec "$@"',
            str(cgroup / "cgroup.procs"),
            sys.executable,
            "-S",
            str(APP),
        ]
        child = Child(f"pod/{name}", argv, self.dir / f"{name}.log", env).start()
        container = Container(namespace, name, meta["uid"], ids, env, child, status_file, cgroup)
        self.containers[name] = container
        self.api.set_pod_phase(namespace, name, "Running")
        return container

    def stop_all(self) -> None:
        for container in self.containers.values():
            container.child.stop(grace=5)
        self.cgroups.remove()


def requested_units(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in pod["spec"]["containers"]:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(names.RESOURCE_VNPU, 0))
    return total


def container_env(response: api_pb.ContainerAllocateResponse, extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: a few base variables, Allocate's envs with container paths mapped to host paths."""
    env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    mounts = [(m.container_path.rstrip("/"), m.host_path.rstrip("/")) for m in response.mounts]
    env.update({key: host_value(value, mounts) for key, value in response.envs.items()})
    env.update(extra)
    return env


def host_value(value: str, mounts: list[tuple[str, str]]) -> str:
    """``value`` (a path, or a ':' or ',' separated list of them) with container paths mapped to host paths."""
    for separator in (":", ","):
        if separator in value:
            return separator.join(host_value(part, mounts) for part in value.split(separator))
    for container_path, host_path in mounts:
        if value == container_path or value.startswith(container_path + "/"):
            return host_path + value[len(container_path) :]
    return value
