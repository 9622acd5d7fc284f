"""DESIGN.md section 4 on the real components: kubelet's device manager, the real scheduler with the chart's
configuration and the extender, kubelet's Allocate, and what reaches the container.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_cri import process_env, process_pid, records_of
from realk8s_flexnpu import INVENTORY, REPO, Flexnpu, claim_registration_id, wait_registered
from realk8s_procs import wait_for

from flexnpu import names
from flexnpu.shim.grant.shm import slot_name

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

UNITS_PER_CARD = 10  # the chart's default units.unitsPerCard
MIB = 1 << 20


def readme_pod() -> dict[str, Any]:
    """deploy/examples/pod-vnpu.yaml as is, quantities as strings (the typed client refuses YAML's integers)."""
    pod: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "examples" / "pod-vnpu.yaml").read_text())
    for container in pod["spec"]["containers"]:
        for kind in ("limits", "requests"):
            quantities = container.get("resources", {}).get(kind, {})
            quantities.update({k: str(v) for k, v in quantities.items()})
    return pod


def test_node_advertises_vnpu_units(flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any) -> None:
    def advertised() -> Any:
        node = core.read_node(cluster.node_name)
        capacity = node.status.capacity or {}
        return node if capacity.get(names.RESOURCE_VNPU) else None

    node = wait_for("huawei.com/vnpu capacity", advertised, 120, watch=cluster.procs, interval=0.5)
    expected = str(len(INVENTORY) * UNITS_PER_CARD)
    assert node.status.capacity[names.RESOURCE_VNPU] == expected
    assert node.status.allocatable[names.RESOURCE_VNPU] == expected
    inventory = json.loads(node.metadata.annotations[names.ANNOTATION_INVENTORY])
    assert sorted(c["uuid"] for c in inventory["cards"]) == sorted(c["uuid"] for c in INVENTORY)


def test_readme_pod_gets_its_assignment(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    manifest = readme_pod()
    name, namespace = manifest["metadata"]["name"], "default"

    def claim_reads(source: str) -> float:
        return flexnpu_stack.device_plugin_metric("flexnpu_deviceplugin_claim_reads_total", {"source": source})

    before = {s: claim_reads(s) for s in ("cache", "api")}
    core.create_namespaced_pod(namespace, manifest)
    try:
        check_readme_pod(flexnpu_stack, cluster, core, api, name, namespace)
        # Allocate read the pod's claim from the watch of the node's claims (the CRD's selectable field
        # spec.nodeName), not with a list call of its own.
        reads = {s: claim_reads(s) - before[s] for s in before}
        assert reads["cache"] >= 1 and reads["api"] == 0, reads
    finally:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)


def check_readme_pod(
    stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient, name: str, namespace: str
) -> None:

    def running() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" else None

    wait_for(f"pod {name} Running", running, 180, watch=cluster.procs, interval=0.5)

    def allocated() -> Any:  # the device plugin patches the handshake just after its Allocate answered
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.metadata.annotations.get(names.ANNOTATION_BIND_PHASE) == "allocated" else None

    pod = wait_for(f"pod {name} allocated", allocated, 30, watch=cluster.procs, interval=0.2)
    assert pod.spec.node_name == cluster.node_name
    [card] = json.loads(pod.metadata.annotations[names.ANNOTATION_ASSIGNED])
    assert card["units"] == 3 and card["memory_mib"] == 16384
    assert card["uuid"] in {c["uuid"] for c in INVENTORY}

    [record] = records_of(cluster.cri_records, namespace, name)
    pid = wait_for(f"process of pod {name}", lambda: process_pid(cluster.cri_records, record), 30)
    env = process_env(pid)
    # The operator registered the claim on flexnpud under the id the container was told.
    claim = wait_registered(stack, namespace, pod.metadata.uid)
    assert {
        k: env.get(k)
        for k in (
            names.ENV_ASCEND_VISIBLE_DEVICES,
            names.ENV_CARD,
            names.ENV_CARD_INDEX,
            names.ENV_UNITS,
            names.ENV_MEMORY_MIB,
            names.ENV_PRIORITY,
            names.ENV_CLAIM,
        )
    } == {
        names.ENV_ASCEND_VISIBLE_DEVICES: str(card["index"]),
        names.ENV_CARD: card["uuid"],
        names.ENV_CARD_INDEX: str(card["index"]),
        names.ENV_UNITS: "3",
        names.ENV_MEMORY_MIB: "16384",
        names.ENV_PRIORITY: "high",
        names.ENV_CLAIM: claim_registration_id(claim),
    }
    # The interposer: its slot's id and directory, and a read-only /etc/ld.so.preload naming the library.
    assert env.get("FLEXNPU_ID") == claim_registration_id(claim)
    assert env.get("FLEXNPU_SHIM_DIR") == names.SHIM_SOCKET_DIR
    [preload] = [m for m in record.mounts if m["containerPath"] == "/etc/ld.so.preload"]
    assert preload.get("readonly") is True, preload
    assert {d["containerPath"] for d in record.devices} == {f"/dev/davinci{card['index']}", *names.ASCEND_DEVICE_NODES}
    read_only = {m["containerPath"] for m in record.mounts if m.get("readonly")}
    assert read_only >= set(names.ASCEND_DRIVER_MOUNTS)
    assert claim["status"]["flexnpuId"] == env["FLEXNPU_ID"]
    registration = stack.registrations()[env["FLEXNPU_ID"]]
    assert {k: registration[k] for k in ("npu", "aicore_alloc", "memory_alloc", "priority")} == {
        "npu": card["index"],
        "aicore_alloc": 3,
        "memory_alloc": 16384,
        "priority": "high",
    }
    assert registration["memory_cap_bytes"] == 16384 * MIB
    assert (stack.socket_dir / slot_name(env["FLEXNPU_ID"])).is_file()
