"""Quantities as the real API server stores them: it canonicalises every resource quantity, so a pod that asks
for ``huawei.com/vnpu-memory: 2000`` (MiB) is read back as ``"2k"``; kmock and the fast tests never do that.
"""

from __future__ import annotations

from typing import Any

import pytest
from realk8s_cluster import ControlPlane
from realk8s_flexnpu import Flexnpu
from realk8s_procs import wait_for

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

NAMESPACE = "default"


def pod_with_memory(name: str, memory_mib: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "flexnpu-scheduler",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": "realk8s.local/process:1",
                    "command": ["/bin/sleep", "3600"],
                    "resources": {"limits": {names.RESOURCE_VNPU: "2", names.RESOURCE_VNPU_MEMORY: str(memory_mib)}},
                }
            ],
        },
    }


def decided(core: Any, name: str) -> Any:
    """The pod once it runs, or once kube-scheduler has reported why it cannot place it."""
    pod = core.read_namespaced_pod(name, NAMESPACE)
    scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
    if pod.status.phase == "Running" or (scheduled and scheduled[0].status == "False" and scheduled[0].message):
        return pod
    return None


def test_memory_that_is_a_multiple_of_1000(flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, pod_with_memory("memory-2000", 2000))
    stored = core.read_namespaced_pod("memory-2000", NAMESPACE).spec.containers[0].resources.limits
    assert stored[names.RESOURCE_VNPU_MEMORY] == "2k"  # what every component reads back
    try:
        pod = wait_for(
            "pod memory-2000 Running or refused",
            lambda: decided(core, "memory-2000"),
            120,
            watch=cluster.procs,
            interval=0.5,
        )
        scheduled = [c.message for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        assert pod.status.phase == "Running", f"not scheduled: {scheduled}"
    finally:
        core.delete_namespaced_pod("memory-2000", NAMESPACE, grace_period_seconds=1)
