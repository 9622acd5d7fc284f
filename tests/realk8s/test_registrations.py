"""Issue 10 cases 2 and 7 on the real components: the operator registers each pod's claim on flexnpud.

Case 2 is the demo's scenario (shim/demo.py): a 2-unit and an 8-unit batch pod and a 2-unit high-priority
pod; each claim reaches phase Registered on the real API server, and flexnpud holds one registration per pod
with that pod's units, memory cap and priority, on the card the pod's annotation names. With the chart's
default oversubscription (1) a card takes 10 units, so the three (12 units) cannot all share one card here.

Case 7: a StatefulSet pod deleted and recreated under the same name gets its own claim, Registered, while the
old claim (held by the operator's finalizer until flexnpud forgot it) must not collide with the new one. First
as it happens with a reachable flexnpud (the old claim goes within a second), then with the old claim held
(a second finalizer stands in for the operator's while it cannot reach the node's daemon).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from realk8s_cluster import ControlPlane
from realk8s_flexnpu import Flexnpu, claim_of_pod, wait_registered
from realk8s_procs import wait_for

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

IMAGE = "realk8s.local/process:1"
UNITS_PER_CARD = 10
# (name, units, priority, memory MiB): the demo's tenants, each with its own memory so a swap would show.
DEMO_PODS = (("batch-2", 2, "normal", 4097), ("batch-8", 8, "normal", 4099), ("critical", 2, "high", 4101))


def vnpu_pod_spec(units: int, memory_mib: int, restart: str = "Never") -> dict[str, Any]:
    return {
        "schedulerName": "flexnpu-scheduler",
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "main",
                "image": IMAGE,
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {names.RESOURCE_VNPU: str(units), names.RESOURCE_VNPU_MEMORY: str(memory_mib)}},
            }
        ],
    }


def make_namespace(cluster: ControlPlane, core: Any, namespace: str) -> None:
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    wait_for(
        f"ServiceAccount {namespace}/default",
        lambda: core.read_namespaced_service_account("default", namespace),
        120,
        watch=cluster.procs,
        interval=0.5,
    )


def registered_or_why(stack: Flexnpu, core: Any, pod: Any, timeout: float) -> dict[str, Any]:
    """The pod's claim once Registered; on timeout, the failure names the pod's Warning Events."""
    try:
        return wait_registered(stack, pod.metadata.namespace, pod.metadata.uid, timeout=timeout)
    except TimeoutError as exc:
        events = core.list_namespaced_event(
            pod.metadata.namespace, field_selector=f"involvedObject.uid={pod.metadata.uid}"
        ).items
        warnings = [f"{e.reason}: {e.message}" for e in events if e.type == "Warning"]
        raise AssertionError(f"{exc}; the pod's Warning Events: {warnings}") from exc


def running_pod(
    cluster: ControlPlane, core: Any, namespace: str, name: str, not_uid: str = "", timeout: float = 180
) -> Any:
    """Pod ``name`` once Running (and, with ``not_uid``, once it is another pod than that one)."""

    def running() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.metadata.uid == not_uid or pod.metadata.deletion_timestamp is not None:
            return None
        return pod if pod.status.phase == "Running" else None

    return wait_for(f"pod {namespace}/{name} Running", running, timeout, watch=cluster.procs, interval=0.5)


def test_demo_pods_are_registered_on_flexnpud(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    namespace = "demo"
    make_namespace(cluster, core, namespace)
    for name, units, priority, memory in DEMO_PODS:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": {names.ANNOTATION_PRIORITY: priority}},
            "spec": vnpu_pod_spec(units, memory),
        }
        core.create_namespaced_pod(namespace, manifest)
    try:
        registered = {}
        for name, units, priority, memory in DEMO_PODS:
            pod = running_pod(cluster, core, namespace, name)
            claim = wait_registered(flexnpu_stack, namespace, pod.metadata.uid)
            [card] = json.loads(pod.metadata.annotations[names.ANNOTATION_ASSIGNED])
            registered[name] = (claim["status"]["flexnpuId"], card, units, priority, memory)
        held = flexnpu_stack.registrations()
        got = {
            name: {k: held[flexnpu_id][k] for k in ("npu", "aicore_alloc", "memory_alloc", "priority")}
            for name, (flexnpu_id, _, _, _, _) in registered.items()
        }
        want = {
            name: {"npu": card["index"], "aicore_alloc": units, "memory_alloc": memory, "priority": priority}
            for name, (_, card, units, priority, memory) in registered.items()
        }
        assert got == want
        assert len({flexnpu_id for flexnpu_id, *_ in registered.values()}) == len(DEMO_PODS)
        per_card = Counter[int]()
        for registration in held.values():
            per_card[registration["npu"]] += registration["aicore_alloc"]
        assert max(per_card.values()) <= UNITS_PER_CARD, f"a card is booked past its units: {dict(per_card)}"
    finally:
        for name, *_ in DEMO_PODS:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)


def statefulset(name: str, units: int, memory_mib: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {names.ANNOTATION_PRIORITY: "normal"}},
                "spec": vnpu_pod_spec(units, memory_mib, restart="Always"),
            },
        },
    }


def test_statefulset_pod_recreated_with_the_same_name_gets_its_own_claim(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    namespace, name = "sts", "web"
    make_namespace(cluster, core, namespace)
    apps: Any = k8s.AppsV1Api(api)
    apps.create_namespaced_stateful_set(namespace, statefulset(name, 2, 2053))
    pod_name = f"{name}-0"
    try:
        first = running_pod(cluster, core, namespace, pod_name)
        old_claim = wait_registered(flexnpu_stack, namespace, first.metadata.uid)
        old_id = old_claim["status"]["flexnpuId"]
        assert old_id in flexnpu_stack.registrations()

        core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=1)
        second = running_pod(cluster, core, namespace, pod_name, not_uid=first.metadata.uid)
        new_claim = registered_or_why(flexnpu_stack, core, second, timeout=60)
        new_id = new_claim["status"]["flexnpuId"]
        assert new_id != old_id
        assert new_claim["metadata"]["uid"] != old_claim["metadata"]["uid"]

        # The old claim goes with its pod, and flexnpud forgets its registration; the new one stays.
        def old_gone() -> bool | None:
            held = flexnpu_stack.registrations()
            if claim_of_pod(api, namespace, first.metadata.uid) is None and old_id not in held:
                return True
            return None

        wait_for("old claim and its registration gone", old_gone, 120, watch=cluster.procs, interval=0.5)
        registration = flexnpu_stack.registrations()[new_id]
        assert (registration["aicore_alloc"], registration["memory_alloc"]) == (2, 2053)
    finally:
        apps.delete_namespaced_stateful_set(name, namespace)
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=1)


HOLD = "realk8s.flexnpu.io/hold"


def set_claim_finalizers(api: k8s.ApiClient, claim: dict[str, Any], finalizers: list[str]) -> None:
    meta = claim["metadata"]
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
        names.CRD_GROUP,
        names.CRD_VERSION,
        meta["namespace"],
        names.CRD_PLURAL,
        meta["name"],
        {"metadata": {"finalizers": finalizers}},
    )


def read_claim(api: k8s.ApiClient, claim: dict[str, Any]) -> dict[str, Any] | None:
    meta = claim["metadata"]
    try:
        found: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[assignment]
            names.CRD_GROUP, names.CRD_VERSION, meta["namespace"], names.CRD_PLURAL, meta["name"]
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found if found["metadata"]["uid"] == meta["uid"] else None


def test_statefulset_pod_recreated_while_the_old_claim_is_held(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    namespace, name = "sts-held", "db"
    make_namespace(cluster, core, namespace)
    apps: Any = k8s.AppsV1Api(api)
    apps.create_namespaced_stateful_set(namespace, statefulset(name, 2, 2059))
    pod_name = f"{name}-0"
    old_claim: dict[str, Any] | None = None
    try:
        first = running_pod(cluster, core, namespace, pod_name)
        old_claim = wait_registered(flexnpu_stack, namespace, first.metadata.uid)
        set_claim_finalizers(api, old_claim, [*old_claim["metadata"].get("finalizers", []), HOLD])
        core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=1)

        def held_and_terminating() -> bool | None:
            claim = read_claim(api, old_claim or {})
            return True if claim is not None and claim["metadata"].get("deletionTimestamp") else None

        wait_for("old claim deleted and held", held_and_terminating, 60, watch=cluster.procs, interval=0.5)
        second = running_pod(cluster, core, namespace, pod_name, not_uid=first.metadata.uid, timeout=60)
        new_claim = registered_or_why(flexnpu_stack, core, second, timeout=60)
        assert new_claim["metadata"]["uid"] != old_claim["metadata"]["uid"]
        assert read_claim(api, old_claim) is not None, "the old claim went before the check"
    finally:
        if old_claim is not None and (current := read_claim(api, old_claim)) is not None:
            set_claim_finalizers(api, current, [f for f in current["metadata"].get("finalizers", []) if f != HOLD])
        apps.delete_namespaced_stateful_set(name, namespace)
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=1)
