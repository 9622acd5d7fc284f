"""Issue 10 case 4 on the real kubelet: a pod with two unit-requesting containers, and one with an init container.

Kubelet calls Allocate once per container that asks for units; each container must carry its own unit count and
its pod's priority and claim.
"""

from __future__ import annotations

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

NAMESPACE = "default"
IMAGE = "realk8s.local/process:1"


def container(name: str, units: int | None, command: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": IMAGE, "command": command}
    if units is not None:
        body["resources"] = {"limits": {names.RESOURCE_VNPU: str(units)}}
    return body


def pod(name: str, containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": "flexnpu-scheduler",
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": containers,
    }
    if init:
        spec["initContainers"] = init
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": spec,
        "metadata": {"name": name, "annotations": {names.ANNOTATION_PRIORITY: "high"}},
    }


def claim_of(api: k8s.ApiClient, uid: str) -> str:
    listed: dict[str, Any] = k8s.CustomObjectsApi(api).list_namespaced_custom_object(  # type: ignore[assignment]
        names.CRD_GROUP, names.CRD_VERSION, NAMESPACE, names.CRD_PLURAL
    )
    [claim] = [c for c in listed["items"] if any(o["uid"] == uid for o in c["metadata"].get("ownerReferences", []))]
    return claim_registration_id(claim)


def run_and_read(
    cluster: ControlPlane, core: Any, api: k8s.ApiClient, manifest: dict[str, Any], containers: list[str]
) -> dict[str, dict[str, str]]:
    """Each named container's FLEXNPU_UNITS / PRIORITY / CLAIM as its process got them, and the expectation."""
    name = manifest["metadata"]["name"]
    core.create_namespaced_pod(NAMESPACE, manifest)

    def running() -> Any:
        current = core.read_namespaced_pod(name, NAMESPACE)
        return current if current.status.phase == "Running" else None

    current = wait_for(f"pod {name} Running", running, 180, watch=cluster.procs, interval=0.5)
    claim = claim_of(api, current.metadata.uid)
    got: dict[str, dict[str, str]] = {"want claim": {"claim": claim}}
    for record in records_of(cluster.cri_records, NAMESPACE, name):
        if record.container_name in containers:
            pid = wait_for(
                f"process of {name}/{record.container_name}", partial(process_pid, cluster.cri_records, record), 30
            )
            env = process_env(pid)
            got[record.container_name] = {
                k: env.get(k, "") for k in (names.ENV_UNITS, names.ENV_PRIORITY, names.ENV_CLAIM)
            }
    return got


def test_two_containers_each_get_their_units_priority_and_claim(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    manifest = pod(
        "two-containers", [container("a", 3, ["/bin/sleep", "3600"]), container("b", 2, ["/bin/sleep", "3600"])]
    )
    try:
        got = run_and_read(cluster, core, api, manifest, ["a", "b"])
    finally:
        core.delete_namespaced_pod("two-containers", NAMESPACE, grace_period_seconds=1)
    claim = got.pop("want claim")["claim"]
    assert got == {
        "a": {names.ENV_UNITS: "3", names.ENV_PRIORITY: "high", names.ENV_CLAIM: claim},
        "b": {names.ENV_UNITS: "2", names.ENV_PRIORITY: "high", names.ENV_CLAIM: claim},
    }


def test_app_container_after_an_init_container_keeps_priority_and_claim(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    manifest = pod(
        "with-init", [container("app", 3, ["/bin/sleep", "3600"])], init=[container("init", 3, ["/bin/true"])]
    )
    try:
        got = run_and_read(cluster, core, api, manifest, ["app"])
    finally:
        core.delete_namespaced_pod("with-init", NAMESPACE, grace_period_seconds=1)
    claim = got.pop("want claim")["claim"]
    assert got == {"app": {names.ENV_UNITS: "3", names.ENV_PRIORITY: "high", names.ENV_CLAIM: claim}}
