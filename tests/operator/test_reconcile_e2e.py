"""The operator (kopf, in-process) against the kmock API emulator and real flexnpud processes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from flexnpu import names
from flexnpu.operator.settings import OperatorSettings
from flexnpu_testsupport.operatorkit import (
    DaemonProcess,
    claim,
    create,
    delete,
    eventually,
    patch_claim,
    read_claim,
    running_operator,
    workload_pod,
)


def status_of(kube: Any, name: str) -> dict[str, Any]:
    return dict((read_claim(kube, "default", name) or {}).get("status") or {})


def reason_of(kube: Any, name: str) -> str:
    conditions = status_of(kube, name).get("conditions") or []
    return next((str(c["reason"]) for c in conditions if c["type"] == "Registered"), "")


def events_about(kube: Any, name: str) -> list[dict[str, Any]]:
    import kmock

    found = []
    for key in list(kube.objects.keys()):
        obj = kube.objects[key]
        if key[0] == kmock.resource("v1", "events") and not obj.deleted:
            raw = obj.raw
            if raw.get("involvedObject", {}).get("name") == name:
                found.append(raw)
    return found


async def registered(kube: Any, name: str, daemon: DaemonProcess, **expected: int) -> bool:
    status = status_of(kube, name)
    if status.get("phase") != "Registered":
        return False
    held = (await daemon.registrations()).get(str(status.get("flexnpuId")))
    return held is not None and all(held[k] == v for k, v in expected.items())


async def gone_from(daemon: DaemonProcess, flexnpu_id: str) -> bool:
    return flexnpu_id not in await daemon.registrations()


async def test_lifecycle_create_update_delete(kube: Any, node: DaemonProcess, settings: OperatorSettings) -> None:
    async with running_operator(settings, str(kube.url)):
        await create(kube, claim("train", "node-a", npu=3, aicore=4, memory=8192, priority="high"))
        await eventually(
            lambda: registered(kube, "train", node, npu=3, aicore_alloc=4, memory_alloc=8192),
            "claim registered on the daemon",
        )
        status = status_of(kube, "train")
        held = (await node.registrations())[status["flexnpuId"]]
        assert held["priority"] == "high"
        assert names.CLAIM_FINALIZER in read_claim(kube, "default", "train")["metadata"]["finalizers"]  # type: ignore[index]
        assert [c["status"] for c in status["conditions"] if c["type"] == "Registered"] == ["True"]
        assert any(e["reason"] == "Registered" for e in events_about(kube, "train"))

        await patch_claim(kube, "default", "train", {"spec": {"aicoreAlloc": 6}})
        await eventually(lambda: registered(kube, "train", node, aicore_alloc=6), "the update re-registered")
        assert status_of(kube, "train")["observedGeneration"] == 2

        await delete(kube, names.CRD_KIND, "default", "train")
        await eventually(lambda: read_claim(kube, "default", "train") is None, "finalizer released, claim gone")
        assert status["flexnpuId"] not in await node.registrations()


async def test_repairs_a_daemon_that_restarted_empty_and_drift(
    kube: Any, node: DaemonProcess, settings: OperatorSettings
) -> None:
    async with running_operator(settings, str(kube.url)):
        await create(kube, claim("serve", "node-a", npu=1, aicore=3, memory=4096))
        await eventually(lambda: registered(kube, "serve", node, aicore_alloc=3), "registered")
        flexnpu_id = status_of(kube, "serve")["flexnpuId"]

        await node.stop()
        # The node lost its state: the daemon starts from a directory that did not exist, so whatever it holds
        # from now on the operator's re-check registered again (asserting the empty moment itself would race it).
        await node.start(fresh_state=True)
        await eventually(lambda: registered(kube, "serve", node, aicore_alloc=3), "re-registered after restart")

        changed = {
            "flexnpu_id": flexnpu_id,
            "entity": "x",
            "npu": 1,
            "chip": 0,
            "aicore_alloc": 1,
            "memory_alloc": 4096,
        }
        assert await node.post("/device/register", changed) == 200  # someone changed it behind our back
        await eventually(lambda: registered(kube, "serve", node, aicore_alloc=3, memory_alloc=4096), "drift repaired")


async def test_quota_overflow_fails_with_the_daemons_reason(
    kube: Any, node: DaemonProcess, settings: OperatorSettings
) -> None:
    async with running_operator(settings, str(kube.url)):
        await create(kube, claim("big", "node-a", npu=0, aicore=8))
        await eventually(lambda: registered(kube, "big", node, aicore_alloc=8), "first claim registered")
        await create(kube, claim("late", "node-a", npu=0, aicore=4))
        await eventually(lambda: status_of(kube, "late").get("phase") == "Failed", "second claim Failed")
        status = status_of(kube, "late")
        assert reason_of(kube, "late") == "QuotaExceeded"
        assert "does not fit" in status["message"] and "node-a" in status["message"]
        assert any(e["reason"] == "QuotaExceeded" and e["type"] == "Warning" for e in events_about(kube, "late"))
        assert len(await node.registrations()) == 1

        await create(kube, claim("nocard", "node-a", npu=42, aicore=1))
        await eventually(lambda: status_of(kube, "nocard").get("phase") == "Failed", "bad npu Failed")
        assert reason_of(kube, "nocard") == "InvalidRequest"
        assert "no such card" in status_of(kube, "nocard")["message"]

        await delete(kube, names.CRD_KIND, "default", "big")  # room again: the re-check registers the late one
        await eventually(lambda: registered(kube, "late", node, aicore_alloc=4), "late claim registered")


async def test_node_without_daemon_is_reported_and_never_blocks_deletion(
    kube: Any, node: DaemonProcess, settings: OperatorSettings
) -> None:
    async with running_operator(settings, str(kube.url)):
        await create(kube, claim("lost", "node-z", aicore=2))
        await eventually(lambda: reason_of(kube, "lost") == "NoDaemon", "NoDaemon reported")
        status = status_of(kube, "lost")
        assert status["phase"] == "Pending"
        assert "node node-z has no flexnpu daemon" in status["message"]
        daemon_condition = [c for c in status["conditions"] if c["type"] == "DaemonReachable"]
        assert daemon_condition[0]["status"] == "False"

        await delete(kube, names.CRD_KIND, "default", "lost")
        await eventually(lambda: read_claim(kube, "default", "lost") is None, "deleted despite no daemon")


async def test_claim_of_a_gone_pod_is_released(kube: Any, node: DaemonProcess, settings: OperatorSettings) -> None:
    pod = workload_pod("infer-0", "node-a")
    await create(kube, pod)
    async with running_operator(settings, str(kube.url)):
        await create(kube, claim("infer", "node-a", aicore=2, pod=pod))
        await eventually(lambda: registered(kube, "infer", node, aicore_alloc=2), "registered")
        flexnpu_id = status_of(kube, "infer")["flexnpuId"]
        assert (await node.registrations())[flexnpu_id]["pod_uid"] == pod["metadata"]["uid"]

        await delete(kube, "Pod", "default", "infer-0")
        await eventually(lambda: status_of(kube, "infer").get("phase") == "Releasing", "released")
        assert reason_of(kube, "infer") == "PodGone"
        # Releasing is reported also when the unregister did not get through (a loaded daemon): the next resync
        # tries again, so the registration goes, if not at once.
        await eventually(lambda: gone_from(node, flexnpu_id), "the registration gone from flexnpud")


async def test_a_claim_naming_a_pod_of_another_namespace_is_released_as_its_pod_is_not_there(
    kube: Any, node: DaemonProcess, settings: OperatorSettings
) -> None:
    """A podRef names a pod of the claim's namespace: a tenant's claim with another namespace's pod uid must not
    stay registered for that pod (flexnpud would let that pod's processes, not the tenant's, use it)."""
    pod = workload_pod("infer-0", "node-a")
    await create(kube, pod)
    async with running_operator(settings, str(kube.url)):
        await create(kube, claim("own", "node-a", aicore=2, pod=pod))
        await eventually(lambda: registered(kube, "own", node, aicore_alloc=2), "the pod's own claim registered")
        await create(kube, claim("posing", "node-a", npu=1, aicore=2, pod=pod, namespace="tenant-b"))

        def phase(namespace: str, name: str) -> str:
            return str(((read_claim(kube, namespace, name) or {}).get("status") or {}).get("phase") or "")

        await eventually(lambda: phase("tenant-b", "posing") == "Releasing", "the posing claim released")
        assert phase("default", "own") == "Registered"
        posing = str(((read_claim(kube, "tenant-b", "posing") or {}).get("status") or {}).get("flexnpuId"))
        await eventually(lambda: gone_from(node, posing), "the posing claim's registration gone from flexnpud")
        own = status_of(kube, "own")["flexnpuId"]
        assert [(i, r["pod_uid"]) for i, r in (await node.registrations()).items()] == [(own, pod["metadata"]["uid"])]


def extender_made(body: dict[str, Any]) -> dict[str, Any]:
    """A claim as the extender creates it at bind: the operator's deregister finalizer already set."""
    body["metadata"]["finalizers"] = [names.CLAIM_FINALIZER]
    return body


async def test_handling_a_claim_is_one_write_of_its_status(
    kube: Any, node: DaemonProcess, settings: OperatorSettings
) -> None:
    """kopf's own state goes into the status the handler writes anyway: with it in annotations, each claim
    cost a second PATCH (of the object), one more write and watch event on the API server."""
    import kmock

    writes: list[tuple[str, str | None]] = []

    def observe(request: Any) -> None:
        if request.name == "counted" and request.action != kmock.action.CREATE:
            writes.append((str(request.action), request.subresource))

    async with running_operator(replace(settings, resync_interval=3600), str(kube.url)):
        await create(kube, extender_made(claim("probe", "node-a", npu=0)))  # the operator's watch runs
        await eventually(lambda: registered(kube, "probe", node), "the probe registered")
        kube.observer = observe
        await create(kube, extender_made(claim("counted", "node-a", npu=1, aicore=3)))
        await eventually(lambda: registered(kube, "counted", node, aicore_alloc=3), "registered")
        assert writes == [(str(kmock.action.UPDATE), "status")]
        counted = read_claim(kube, "default", "counted") or {}
        assert "last-handled-configuration" in counted["status"]["kopf"]
        assert not [a for a in counted["metadata"].get("annotations", {}) if a.startswith(names.DOMAIN)]

        await patch_claim(kube, "default", "counted", {"spec": {"aicoreAlloc": 4}})
        await eventually(lambda: registered(kube, "counted", node, aicore_alloc=4), "the update re-registered")


async def test_a_claim_whose_kopf_state_is_in_annotations_is_reconciled_again(
    kube: Any, node: DaemonProcess, settings: OperatorSettings
) -> None:
    """A claim handled by an operator that kept kopf's state in flexnpu.io annotations (before its move into
    the status): the new operator finds no state in the status, reconciles the claim once more (flexnpud's
    register leaves an equal registration alone) and keeps its state in the status from then on."""
    body = extender_made(claim("older", "node-a", npu=2, aicore=2))
    spec_seen = {"spec": body["spec"], "metadata": {}}
    body["metadata"]["annotations"] = {f"{names.DOMAIN}/last-handled-configuration": json.dumps(spec_seen)}
    await create(kube, body)
    async with running_operator(settings, str(kube.url)):
        await eventually(lambda: registered(kube, "older", node, aicore_alloc=2), "registered")
        await eventually(
            lambda: "last-handled-configuration" in (status_of(kube, "older").get("kopf") or {}), "kopf's state moved"
        )
        assert len(await node.registrations()) == 1
