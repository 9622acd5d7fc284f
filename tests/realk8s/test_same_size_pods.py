"""Issue 10 case 3: twenty pods of the same size created at once on one node, through the real kubelet.

Kubelet's Allocate does not say which pod it serves; each container must still get its own pod's card, memory
cap, priority and claim. Memory and priority differ per pod so that any swap between pods shows (memory is
never a multiple of 1000 here: see test_quantities.py for that bug). Kubelet admits pods in creation-timestamp
order with ties (1 s resolution) in no published order, so the device plugin alone cannot tell same-size pods
apart: the extender binds a pod to a node only once no other pod of the same first Allocate size waits there
for its Allocate (flexnpu.extender.service), and each Allocate then has exactly one pod it can be for.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_cri import process_env, process_pid, records_of
from realk8s_flexnpu import Flexnpu, claim_registration_id
from realk8s_procs import wait_for

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

COUNT = 20
NAMESPACE = "same-size"
PRIORITIES = ("high", "normal", "low")
IMAGE = "realk8s.local/process:1"


def same_size_pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"same-{i:02d}", "annotations": {names.ANNOTATION_PRIORITY: PRIORITIES[i % 3]}},
        "spec": {
            "schedulerName": "flexnpu-scheduler",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["/bin/sleep", "3600"],
                    "resources": {"limits": {names.RESOURCE_VNPU: "1", names.RESOURCE_VNPU_MEMORY: str(1001 + 10 * i)}},
                }
            ],
        },
    }


def expected_env(pod: Any, claims: dict[str, str]) -> dict[str, str]:
    [card] = json.loads(pod.metadata.annotations[names.ANNOTATION_ASSIGNED])
    return {
        names.ENV_CARD: card["uuid"],
        names.ENV_MEMORY_MIB: str(card["memory_mib"]),
        names.ENV_PRIORITY: pod.metadata.annotations[names.ANNOTATION_PRIORITY],
        names.ENV_CLAIM: claims[pod.metadata.uid],
    }


def claims_by_pod_uid(api: k8s.ApiClient) -> dict[str, str]:
    listed: dict[str, Any] = k8s.CustomObjectsApi(api).list_namespaced_custom_object(  # type: ignore[assignment]
        names.CRD_GROUP, names.CRD_VERSION, NAMESPACE, names.CRD_PLURAL
    )
    return {
        o["uid"]: claim_registration_id(c) for c in listed["items"] for o in c["metadata"].get("ownerReferences", [])
    }


def test_twenty_same_size_pods_each_get_their_own(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    wait_for(
        f"ServiceAccount {NAMESPACE}/default",
        lambda: core.read_namespaced_service_account("default", NAMESPACE),
        120,
        watch=cluster.procs,
    )
    for i in range(COUNT):
        core.create_namespaced_pod(NAMESPACE, same_size_pod(i))

    def settled() -> list[Any] | None:
        pods = core.list_namespaced_pod(NAMESPACE).items
        done = [p for p in pods if p.status.phase in ("Running", "Failed", "Succeeded")]
        return pods if len(done) == COUNT else None

    pods = wait_for("twenty pods started or failed", settled, 300, watch=cluster.procs, interval=1.0)
    failed = {p.metadata.name: (p.status.reason, p.status.message) for p in pods if p.status.phase != "Running"}
    assert not failed, f"pods that did not run: {failed}"

    claims = claims_by_pod_uid(api)
    wrong = {}
    for pod in pods:
        [record] = records_of(cluster.cri_records, NAMESPACE, pod.metadata.name)
        pid = wait_for(f"process of {pod.metadata.name}", partial(process_pid, cluster.cri_records, record), 30)
        env = process_env(pid)
        want = expected_env(pod, claims)
        got = {k: env.get(k, "") for k in want}
        if got != want:
            wrong[pod.metadata.name] = {"want": want, "got": got}
    assert not wrong, f"containers that got another pod's card, cap, priority or claim: {json.dumps(wrong, indent=1)}"
