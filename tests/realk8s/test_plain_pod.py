"""The harness itself: the real kubelet registers a Ready node and runs a plain pod through our CRI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from realk8s_cluster import ControlPlane
from realk8s_cri import mounts_applied, process_env, process_pid, records_of
from realk8s_procs import wait_for

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

IMAGE = "realk8s.local/process:1"


def plain_pod(name: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["/bin/sleep", "3600"],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ],
            "terminationGracePeriodSeconds": 1,
        },
    }


def test_node_is_ready(ready_node: Any, cluster: ControlPlane) -> None:
    assert ready_node.metadata.name == cluster.node_name
    assert ready_node.status.node_info.container_runtime_version == "realk8s-cri://0.1.0"


def test_plain_pod_runs_with_its_env(ready_node: Any, cluster: ControlPlane, core: Any) -> None:
    env = {"REALK8S_GREETING": "hello from the pod spec", "REALK8S_EMPTY": ""}
    core.create_namespaced_pod("default", plain_pod("plain", env))

    def running() -> Any:
        pod = core.read_namespaced_pod("plain", "default")
        return pod if pod.status.phase == "Running" else None

    pod = wait_for("pod plain Running", running, 120, watch=cluster.procs, interval=0.5)
    assert pod.spec.node_name == cluster.node_name

    [record] = records_of(cluster.cri_records, "default", "plain")
    assert record.container_name == "main"
    pid = wait_for("process of pod plain", lambda: process_pid(cluster.cri_records, record), 30)
    seen = process_env(pid)
    assert seen == record.env  # exactly what kubelet passed, nothing more
    assert {k: seen[k] for k in env} == env
    assert seen["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"  # kubelet's own additions arrive too

    core.delete_namespaced_pod("plain", "default", grace_period_seconds=1)

    def gone() -> bool | None:
        return None if any(p.metadata.name == "plain" for p in core.list_namespaced_pod("default").items) else True

    wait_for("pod plain deleted", gone, 120, watch=cluster.procs, interval=0.5)
    wait_for("process of pod plain ended", lambda: None if _alive(pid) else True, 30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_kubelets_mounts_are_applied_in_the_containers_namespace_only(
    ready_node: Any, cluster: ControlPlane, core: Any, tmp_path: Path
) -> None:
    """A hostPath volume read-only at a path this host does not have: the process reads the volume's file there,
    cannot write it, and the host still has no such path (the CRI's mount namespace, as a runtime gives)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "greeting").write_text("from the volume\n", encoding="utf-8")
    target = "/opt/realk8s-missing/data"
    assert not Path(target).exists()
    pod = plain_pod("mounted", {})
    script = (
        f"cat {target}/greeting > {tmp_path}/seen; "
        f"touch {target}/x 2> /dev/null || echo refused >> {tmp_path}/seen; sleep 3600"
    )
    container = pod["spec"]["containers"][0]
    container["command"] = ["/bin/sh", "-c", script]
    container["volumeMounts"] = [{"name": "data", "mountPath": target, "readOnly": True}]
    pod["spec"]["volumes"] = [{"name": "data", "hostPath": {"path": str(volume), "type": "Directory"}}]
    core.create_namespaced_pod("default", pod)
    try:
        seen = tmp_path / "seen"
        text = wait_for("the container's output", lambda: seen.read_text() if "refused" in _read(seen) else None, 120)
        assert text == "from the volume\nrefused\n"
        [record] = records_of(cluster.cri_records, "default", "mounted")
        applied = mounts_applied(cluster.cri_records, record)
        assert applied is not None
        assert {"source": str(volume), "target": target, "readOnly": True, "origin": "kubelet-mount"} in applied[
            "applied"
        ]
        assert not Path(target).exists() and not Path("/opt/realk8s-missing").exists()
    finally:
        core.delete_namespaced_pod("mounted", "default", grace_period_seconds=1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
