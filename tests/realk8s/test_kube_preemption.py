"""Issue 10 case 6 on the real components: preemption by PriorityClass, through kube-scheduler and the extender.

The suite's node has 4 cards of 10 units. Four pods of a low PriorityClass take a whole card each (one of them
says ``flexnpu.io/priority: high``: the annotation does not shield it); a pod of a high PriorityClass asking 5
units fits only if one of them leaves. kube-scheduler's DefaultPreemption sees the node's huawei.com/vnpu count
(the chart manages it with ``ignoredByScheduler: false``), picks victims by PriorityClass, the extender's
``preempt`` verb checks that the card-level demand then fits, one holder is evicted and the pod is bound to a
card.

Card fragmentation is the case upstream cannot preempt for: with 8 units taken on each card, the node has 8 free
units, so the in-tree filters pass with no victim; DefaultPreemption then finds "expected at least one victim pod
on node" (kubernetes v1.37.2 pkg/scheduler/framework/preemption/preemption.go, dryRunPreemption) and never
calls the extender. The pod stays Pending with the extender's reason and nothing is evicted: a test pins that.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_flexnpu import Flexnpu
from realk8s_procs import wait_for

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

IMAGE = "realk8s.local/process:1"
NAMESPACE = "preemption"


def pod_body(
    name: str, units: int, priority_class: str, flexnpu_priority: str, namespace: str = NAMESPACE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {names.ANNOTATION_PRIORITY: flexnpu_priority},
        },
        "spec": {
            "schedulerName": "flexnpu-scheduler",
            "priorityClassName": priority_class,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["/bin/sleep", "3600"],
                    "resources": {
                        "limits": {names.RESOURCE_VNPU: str(units), names.RESOURCE_VNPU_MEMORY: str(units * 1024)}
                    },
                }
            ],
        },
    }


PRIORITY_CLASSES = (("flexnpu-test-low", 100), ("flexnpu-test-high", 1_000_000))


def setup_namespace(api: k8s.ApiClient, core: Any, namespace: str) -> None:
    scheduling = k8s.SchedulingV1Api(api)
    existing = {c.metadata.name for c in scheduling.list_priority_class().items if c.metadata}
    for name, value in PRIORITY_CLASSES:
        if name not in existing:
            body = k8s.V1PriorityClass(
                metadata=k8s.V1ObjectMeta(name=name), value=value, preemption_policy="PreemptLowerPriority"
            )
            scheduling.create_priority_class(body)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    wait_for("ServiceAccount", lambda: core.read_namespaced_service_account("default", namespace), 60, interval=0.5)


def wait_gone(core: Any, namespace: str) -> None:
    """The namespace deleted and its pods gone (their units free again for the suite's next test)."""
    core.delete_namespace(namespace)

    def gone() -> bool | None:
        return None if core.list_namespaced_pod(namespace).items else True

    wait_for(f"pods of {namespace} gone", gone, 120, interval=0.5)


def running_holders(cluster: ControlPlane, core: Any, namespace: str, units: int) -> list[str]:
    holders = [f"holder-{i}" for i in range(4)]
    for i, name in enumerate(holders):
        flexnpu_priority = "high" if i == 0 else "low"
        core.create_namespaced_pod(namespace, pod_body(name, units, "flexnpu-test-low", flexnpu_priority, namespace))

    def all_running() -> list[Any] | None:
        pods = [core.read_namespaced_pod(n, namespace) for n in holders]
        return pods if all(p.status.phase == "Running" for p in pods) else None

    pods = wait_for("four card holders Running", all_running, 180, watch=cluster.procs, interval=0.5)
    cards = {json.loads(p.metadata.annotations[names.ANNOTATION_ASSIGNED])[0]["index"] for p in pods}
    assert len(cards) == 4, f"the holders share cards: {cards}"
    return holders


def test_a_high_priority_pod_preempts_a_lower_priority_card_holder(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    setup_namespace(api, core, NAMESPACE)
    try:
        holders = running_holders(cluster, core, NAMESPACE, 10)
        core.create_namespaced_pod(NAMESPACE, pod_body("preemptor", 5, "flexnpu-test-high", "high"))

        def bound() -> Any:
            pod = core.read_namespaced_pod("preemptor", NAMESPACE)
            return pod if pod.status.phase == "Running" else None

        pod = wait_for("preemptor Running", bound, 240, watch=cluster.procs, interval=0.5)
        [card] = json.loads(pod.metadata.annotations[names.ANNOTATION_ASSIGNED])
        assert card["units"] == 5
        pods = core.list_namespaced_pod(NAMESPACE).items
        left = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}
        evicted = set(holders) - left
        assert len(evicted) == 1, f"evicted {sorted(evicted)}"
    finally:
        wait_gone(core, NAMESPACE)


def test_card_fragmentation_cannot_be_preempted_for_upstream_and_nothing_is_evicted(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    namespace = f"{NAMESPACE}-fragmented"
    setup_namespace(api, core, namespace)
    try:
        holders = running_holders(cluster, core, namespace, 8)
        core.create_namespaced_pod(namespace, pod_body("preemptor", 5, "flexnpu-test-high", "high", namespace))

        def refused() -> str | None:
            pod = core.read_namespaced_pod("preemptor", namespace)
            for c in pod.status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    return str(c.message)
            return None

        message = wait_for("preemptor Unschedulable", refused, 120, watch=cluster.procs, interval=0.5)
        assert "card" in message or "units" in message, message
        pods = core.list_namespaced_pod(namespace).items
        assert {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None} >= set(holders)
        assert core.read_namespaced_pod("preemptor", namespace).spec.node_name is None
    finally:
        wait_gone(core, namespace)
        for name, _ in PRIORITY_CLASSES:
            k8s.SchedulingV1Api(api).delete_priority_class(name)
