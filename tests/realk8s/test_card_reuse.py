"""Cards freed by a deleted pod are not handed on before flexnpud lets them go, through the real components.

flexnpud holds a claim's units until the operator deregisters it, and that comes after the pod is gone (the
garbage collector deletes the claim, the operator's finalizer deregisters it). A pod placed on those units in
between is refused by the daemon, and kubelet starts its container after the device plugin gave up waiting for the
registration's slot: ungated. The real-kubelet benchmark found this; the extender now counts a claim whose pod is
gone on its card until the claim is gone. Here one pod takes every card of the node, is deleted, and a second pod
of the same size is created at once: it must be placed only when the cards are free on flexnpud too, every claim
of it Registered (never refused), and its container started with its slot.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_cri import records_of
from realk8s_flexnpu import INVENTORY, Flexnpu, claim_registration_id
from realk8s_procs import wait_for
from realk8s_tenants import enforcement_problems

from flexnpu import names
from flexnpu.claims import ClaimPhase

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

NAMESPACE = "card-reuse"
IMAGE = "realk8s.local/process:1"
UNITS = 10 * len(INVENTORY)  # every card of the node, whole


def whole_node_pod(name: str) -> dict[str, Any]:
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
                    "image": IMAGE,
                    "command": ["/bin/sleep", "3600"],
                    "resources": {"limits": {names.RESOURCE_VNPU: str(UNITS)}},
                }
            ],
        },
    }


def claims_of(api: k8s.ApiClient, pod_uid: str) -> list[dict[str, Any]]:
    listed: dict[str, Any] = k8s.CustomObjectsApi(api).list_namespaced_custom_object(  # type: ignore[assignment]
        names.CRD_GROUP, names.CRD_VERSION, NAMESPACE, names.CRD_PLURAL
    )
    return [c for c in listed["items"] if c["metadata"].get("labels", {}).get(names.LABEL_CLAIM_POD_UID) == pod_uid]


def phases(claims: list[dict[str, Any]]) -> list[str]:
    return [str((c.get("status") or {}).get("phase") or "") for c in claims]


def running(core: Any, stack: Flexnpu, name: str) -> Any:
    def reached() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        assert pod.status.phase not in ("Failed", "Succeeded"), f"pod {name}: {pod.status}"
        return pod if pod.status.phase == "Running" else None

    return wait_for(f"pod {name} Running", reached, 240, watch=stack.cluster.procs, interval=0.5)


def all_registered(stack: Flexnpu, pod_uid: str, refused: list[str]) -> list[dict[str, Any]]:
    def registered() -> list[dict[str, Any]] | None:
        claims = claims_of(stack.api, pod_uid)
        refused.extend(p for p in phases(claims) if p == ClaimPhase.FAILED.value)
        done = len(claims) == len(INVENTORY) and all(p == ClaimPhase.REGISTERED.value for p in phases(claims))
        return claims if done else None

    return wait_for(f"claims of pod {pod_uid} Registered", registered, 120, watch=stack.cluster.procs, interval=0.2)


def test_a_pod_placed_right_after_another_left_waits_for_the_cards_to_be_released(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    stack = flexnpu_stack
    stack.build_native()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    wait_for(
        f"ServiceAccount {NAMESPACE}/default",
        lambda: core.read_namespaced_service_account("default", NAMESPACE),
        120,
        watch=cluster.procs,
    )
    try:
        core.create_namespaced_pod(NAMESPACE, whole_node_pod("first"))
        first = running(core, stack, "first")
        all_registered(stack, first.metadata.uid, [])

        core.delete_namespaced_pod("first", NAMESPACE)
        core.create_namespaced_pod(NAMESPACE, whole_node_pod("second"))
        second = running(core, stack, "second")
        refused: list[str] = []
        claims = all_registered(stack, second.metadata.uid, refused)
        assert refused == [], "flexnpud refused the second pod's claims: placed on units it still held"
        assert claims_of(api, first.metadata.uid) == []  # placed only once the first pod's claims were gone

        [record] = records_of(cluster.cri_records, NAMESPACE, "second")
        ids = {claim_registration_id(c) for c in claims}
        flexnpu_id = record.env.get(names.ENV_ID, "")
        assert flexnpu_id in ids, f"FLEXNPU_ID {flexnpu_id!r} is none of the pod's registrations {sorted(ids)}"
        assert enforcement_problems(cluster.cri_records, record, flexnpu_id) == []
    finally:
        core.delete_namespace(NAMESPACE)
