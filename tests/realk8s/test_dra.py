"""Issue 14 on the real components: flexnpu's DRA mode (resource.k8s.io/v1, consumable capacity).

A second kubelet node runs the chart's dra-mode node components: flexnpud (as the release's DaemonSet pod) and the
kubelet plugin, which publishes one ResourceSlice device per card. Pods ask for fractions through
ResourceClaimTemplates (the README's and deploy/examples'); the plain default-scheduler allocates them with its
own DRA allocator, the real kubelet calls NodePrepareResources on the plugin, the plugin registers each claim
with flexnpud and answers with CDI device names, and the suite's CRI applies the CDI spec's variables to the
container's process and its mounts in the container's own mount namespace. Covered: the slices, a 3-unit 16 GiB
high-priority claim end to end, 2 + 8 units sharing one card, 11 units refused with the scheduler's own reason,
memory exhausted before units, a card going unhealthy, the plugin restarted with pods running, claims released
when their pods go, and achieved shares through the runtime: C programs on the fake AscendCL in the containers,
libflexnpu loaded by the read-only /etc/ld.so.preload that the CDI spec mounts, metered by the fake device.
Bad input: a malformed opaque config (a Warning Event on the claim naming the field, nothing registered, no
container), 0 units (rounded up to the request policy's minimum by the scheduler) and memory past HBM (refused).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane
from realk8s_cri import cdi_edits, container_log, process_env, process_pid, records_of
from realk8s_dra import DRA_NODE, DRA_TAINT, GROUP, TOLERATION, VERSION, DraStack
from realk8s_flexnpu import REPO
from realk8s_procs import wait_for
from realk8s_tenants import SATURATING, device_time, enforcement_problems, open_gate, workload_container

from flexnpu import names

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(900)]

NAMESPACE = "dra"
IMAGE = "realk8s.local/process:1"
CARDS = 2
HBM_MIB = 65536  # 910B3
# The fields of a flexnpud registration that only a re-registration would change (usage figures move on their own).
STABLE = ("flexnpu_id", "npu", "aicore_alloc", "memory_alloc", "priority", "memory_cap_bytes")
INVENTORY = tuple({"index": i, "model": "910B3", "uuid": f"npu-dra-{i}"} for i in range(CARDS))


@pytest.fixture(scope="module")
def dra(cluster: ControlPlane, api: k8s.ApiClient, core: Any, ready_node: Any) -> Iterator[DraStack]:
    node = cluster.start_node(DRA_NODE, taints=(DRA_TAINT,))

    def node_ready() -> Any:
        got = core.read_node(node.name)
        ready = [c for c in got.status.conditions or [] if c.type == "Ready"]
        return got if ready and ready[0].status == "True" else None

    wait_for(f"node {node.name} Ready", node_ready, 180, watch=cluster.procs, interval=0.5)
    stack = DraStack(cluster, api, node, CARDS)
    stack.install()
    stack.start_plugin(INVENTORY)
    stack.wait_devices(CARDS)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    wait_for(
        f"ServiceAccount {NAMESPACE}/default",
        lambda: core.read_namespaced_service_account("default", NAMESPACE),
        120,
        watch=cluster.procs,
        interval=0.5,
    )
    yield stack


def custom(api: k8s.ApiClient) -> Any:
    return k8s.CustomObjectsApi(api)


def claim_template(
    name: str, units: int | None, memory: str | None, priority: str | None = None, card: int | None = None
) -> dict[str, Any]:
    """A ResourceClaimTemplate for one request of the driver's DeviceClass with the given capacity (on ``card``:
    a CEL selector on the device's ``index`` attribute)."""
    requests: dict[str, str] = {}
    if units is not None:
        requests[names.DRA_CAPACITY_UNITS] = str(units)
    if memory is not None:
        requests[names.DRA_CAPACITY_MEMORY] = memory
    exactly: dict[str, Any] = {"deviceClassName": names.DRA_DEVICE_CLASS}
    if requests:
        exactly["capacity"] = {"requests": requests}
    if card is not None:
        exactly["selectors"] = [{"cel": {"expression": f'device.attributes["{names.DRA_DRIVER}"].index == {card}'}}]
    spec: dict[str, Any] = {"devices": {"requests": [{"name": "npu", "exactly": exactly}]}}
    if priority is not None:
        parameters = {"apiVersion": "flexnpu.io/v1alpha1", "kind": "VNpuConfig", "priority": priority}
        spec["devices"]["config"] = [
            {"requests": ["npu"], "opaque": {"driver": names.DRA_DRIVER, "parameters": parameters}}
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"spec": spec},
    }


def claim_pod(
    name: str, template: str, command: Sequence[str] = ("/bin/sleep", "3600"), env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "tolerations": [TOLERATION],
            "resourceClaims": [{"name": "npu", "resourceClaimTemplateName": template}],
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": list(command),
                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                    "resources": {"claims": [{"name": "npu"}]},
                }
            ],
        },
    }


def create_template(api: k8s.ApiClient, body: Mapping[str, Any]) -> None:
    custom(api).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "resourceclaimtemplates", body)


def running(stack: DraStack, core: Any, name: str, timeout: float = 180) -> Any:
    def phase() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        return pod if pod.status.phase == "Running" else None

    return wait_for(f"pod {name} Running", phase, timeout, watch=stack.cluster.procs, interval=0.5)


def bound(stack: DraStack, core: Any, name: str, timeout: float = 180) -> Any:
    def node() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        return pod if pod.spec.node_name else None

    return wait_for(f"pod {name} bound", node, timeout, watch=stack.cluster.procs, interval=0.2)


def pod_claim(api: k8s.ApiClient, core: Any, pod_name: str) -> dict[str, Any]:
    """The ResourceClaim the resourceclaim controller made for the pod's ``npu`` claim."""
    pod = core.read_namespaced_pod(pod_name, NAMESPACE)
    [status] = [s for s in pod.status.resource_claim_statuses or [] if s.name == "npu"]
    claim: dict[str, Any] = custom(api).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "resourceclaims", status.resource_claim_name
    )
    return claim


def allocation(claim: Mapping[str, Any]) -> dict[str, Any]:
    [result] = claim["status"]["allocation"]["devices"]["results"]
    return dict(result)


def registration_of(stack: DraStack, claim: Mapping[str, Any]) -> dict[str, Any] | None:
    uid = claim["metadata"]["uid"]
    found = [r for fid, r in stack.registrations().items() if uid[:8] in fid]
    assert len(found) <= 1, f"claim {uid} registered {len(found)} times: {found}"
    return found[0] if found else None


def running_env(records: Path, pod: str) -> dict[str, str]:
    """The environment of the pod's container process as it runs (from /proc), CDI variables included."""
    [record] = records_of(records, NAMESPACE, pod)
    pid = wait_for(f"process of {pod}", lambda: process_pid(records, record), 30)
    return process_env(pid)


def delete_pod(core: Any, name: str) -> None:
    core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=1)

    def gone() -> bool | None:
        try:
            core.read_namespaced_pod(name, NAMESPACE)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return None

    wait_for(f"pod {name} gone", gone, 120, interval=0.5)


def test_slices_publish_one_device_per_card_with_units_and_memory(dra: DraStack) -> None:
    devices = {d["name"]: d for d in dra.wait_devices(CARDS)}
    assert set(devices) == {f"npu-{i}" for i in range(CARDS)}
    for device in devices.values():
        assert device.get("allowMultipleAllocations") is True
        capacity = device["capacity"]
        assert capacity[names.DRA_CAPACITY_UNITS]["value"] == "10"
        assert names.DRA_CAPACITY_MEMORY in capacity


def test_readme_claim_is_prepared_registered_and_reaches_the_process(
    dra: DraStack, api: k8s.ApiClient, core: Any
) -> None:
    """3 units, 16 GiB, priority high: allocated by the scheduler, prepared by the plugin, registered on flexnpud."""
    create_template(api, claim_template("vnpu-3-16g-high", 3, "16Gi", "high"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("readme", "vnpu-3-16g-high"))
    try:
        pod = running(dra, core, "readme")
        assert pod.spec.node_name == DRA_NODE
        claim = pod_claim(api, core, "readme")
        result = allocation(claim)
        assert result["driver"] == names.DRA_DRIVER
        assert result["consumedCapacity"][names.DRA_CAPACITY_UNITS] == "3"
        registration = registration_of(dra, claim)
        assert registration is not None, f"flexnpud has no registration for claim {claim['metadata']['uid']}"
        card = int(result["device"].removeprefix("npu-"))
        assert {k: registration[k] for k in ("npu", "aicore_alloc", "memory_alloc", "priority")} == {
            "npu": card,
            "aicore_alloc": 3,
            "memory_alloc": 16384,
            "priority": "high",
        }
        env = running_env(dra.node.cri_records, "readme")
        assert env[names.ENV_ID] == registration["flexnpu_id"]
        assert env[names.ENV_ASCEND_VISIBLE_DEVICES] == str(card)
        assert env[names.ENV_PRIORITY] == "high"
        [record] = records_of(dra.node.cri_records, NAMESPACE, "readme")
        edits = cdi_edits(dra.node.cri_records, record)
        assert edits is not None and edits["devices"], "kubelet passed the container no CDI device"
        assert all(name.startswith(f"{names.DRA_CDI_KIND}=") for name in edits["devices"])
        nodes = {d["path"] for d in edits.get("deviceNodes", [])}
        assert f"/dev/davinci{card}" in nodes, nodes
    finally:
        delete_pod(core, "readme")
    wait_for("registration released", lambda: True if registration_of(dra, claim) is None else None, 60)
    assert not list(dra.node.cdi_dir.glob(f"*{claim['metadata']['uid']}*")), "CDI spec left after unprepare"


def test_two_and_eight_units_share_one_card(dra: DraStack, api: k8s.ApiClient, core: Any) -> None:
    create_template(api, claim_template("vnpu-2", 2, "8Gi"))
    create_template(api, claim_template("vnpu-8", 8, "8Gi"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("batch-2", "vnpu-2"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("batch-8", "vnpu-8"))
    try:
        running(dra, core, "batch-2")
        running(dra, core, "batch-8")
        devices = {allocation(pod_claim(api, core, p))["device"] for p in ("batch-2", "batch-8")}
        units_by_card: dict[str, int] = {}
        for p in ("batch-2", "batch-8"):
            result = allocation(pod_claim(api, core, p))
            units_by_card[result["device"]] = units_by_card.get(result["device"], 0) + int(
                result["consumedCapacity"][names.DRA_CAPACITY_UNITS]
            )
            assert registration_of(dra, pod_claim(api, core, p)) is not None
        assert all(u <= 10 for u in units_by_card.values())
        assert len(devices) >= 1
    finally:
        delete_pod(core, "batch-2")
        delete_pod(core, "batch-8")


def unschedulable_reason(stack: DraStack, core: Any, name: str) -> str:
    def reason() -> str | None:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return str(c.message)
        return None

    return wait_for(f"pod {name} Unschedulable", reason, 120, watch=stack.cluster.procs, interval=0.5)


def test_eleven_units_are_refused_with_the_schedulers_reason(dra: DraStack, api: k8s.ApiClient, core: Any) -> None:
    create_template(api, claim_template("vnpu-11", 11, None))
    core.create_namespaced_pod(NAMESPACE, claim_pod("eleven", "vnpu-11"))
    try:
        message = unschedulable_reason(dra, core, "eleven")
        assert "cannot allocate all claims" in message or "resourceclaim" in message.lower(), message
    finally:
        delete_pod(core, "eleven")


def test_memory_is_exhausted_before_units(dra: DraStack, api: k8s.ApiClient, core: Any) -> None:
    """Each pod takes 1 unit but 40 GiB of a 64 GiB card: one pod per card, the next one waits."""
    create_template(api, claim_template("vnpu-1-40g", 1, "40Gi"))
    pods = [f"mem-{i}" for i in range(CARDS + 1)]
    for p in pods[:CARDS]:
        core.create_namespaced_pod(NAMESPACE, claim_pod(p, "vnpu-1-40g"))
    try:
        for p in pods[:CARDS]:
            running(dra, core, p)
        core.create_namespaced_pod(NAMESPACE, claim_pod(pods[-1], "vnpu-1-40g"))
        unschedulable_reason(dra, core, pods[-1])
        cards = {allocation(pod_claim(api, core, p))["device"] for p in pods[:CARDS]}
        assert len(cards) == CARDS
    finally:
        for p in pods:
            delete_pod(core, p)


def test_plugin_restart_keeps_running_pods_and_registrations(dra: DraStack, api: k8s.ApiClient, core: Any) -> None:
    create_template(api, claim_template("vnpu-4", 4, "8Gi"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("steady", "vnpu-4"))
    try:
        running(dra, core, "steady")
        before = registration_of(dra, pod_claim(api, core, "steady"))
        assert before is not None
        env_before = running_env(dra.node.cri_records, "steady")
        assert dra.plugin is not None
        dra.plugin.stop()
        dra.cluster.procs.remove(dra.plugin)
        dra.start_plugin(INVENTORY)
        dra.wait_devices(CARDS)
        core.create_namespaced_pod(NAMESPACE, claim_pod("after-restart", "vnpu-4"))
        running(dra, core, "after-restart")
        after = registration_of(dra, pod_claim(api, core, "steady"))
        assert after is not None and {k: after[k] for k in STABLE} == {k: before[k] for k in STABLE}
        assert running_env(dra.node.cri_records, "steady") == env_before
        assert core.read_namespaced_pod("steady", NAMESPACE).status.phase == "Running"
    finally:
        delete_pod(core, "steady")
        delete_pod(core, "after-restart")


def test_kubelet_restart_keeps_running_pods_and_registrations(dra: DraStack, api: k8s.ApiClient, core: Any) -> None:
    """The DRA node's kubelet restarted with a pod running: the container keeps running (same process), its
    claim's registration on flexnpud is untouched (kubelet prepares it again: idempotent), and a claim made after
    the restart is prepared."""
    create_template(api, claim_template("vnpu-5", 5, "8Gi"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("before-kubelet-restart", "vnpu-5"))
    try:
        running(dra, core, "before-kubelet-restart")
        before = registration_of(dra, pod_claim(api, core, "before-kubelet-restart"))
        assert before is not None
        pid = pid_of(dra, "before-kubelet-restart")
        dra.cluster.restart_kubelet(dra.node)
        core.create_namespaced_pod(NAMESPACE, claim_pod("after-kubelet-restart", "vnpu-5"))
        running(dra, core, "after-kubelet-restart")
        assert registration_of(dra, pod_claim(api, core, "after-kubelet-restart")) is not None
        after = registration_of(dra, pod_claim(api, core, "before-kubelet-restart"))
        assert after is not None and {k: after[k] for k in STABLE} == {k: before[k] for k in STABLE}
        assert core.read_namespaced_pod("before-kubelet-restart", NAMESPACE).status.phase == "Running"
        assert pid_of(dra, "before-kubelet-restart") == pid and Path(f"/proc/{pid}").exists()
    finally:
        delete_pod(core, "before-kubelet-restart")
        delete_pod(core, "after-kubelet-restart")


def test_an_unhealthy_card_is_withdrawn(dra: DraStack) -> None:
    sick = [dict(c, health="Unhealthy") if c["index"] == 0 else dict(c) for c in INVENTORY]
    dra.inventory_file(sick)
    devices = dra.wait_devices(CARDS - 1)
    assert {d["name"] for d in devices} == {f"npu-{i}" for i in range(1, CARDS)}
    dra.inventory_file(INVENTORY)
    dra.wait_devices(CARDS)


def test_examples_are_accepted_by_the_api_server(dra: DraStack, api: k8s.ApiClient) -> None:
    """deploy/examples' ResourceClaimTemplates are valid resource.k8s.io/v1 objects (server-side dry run)."""
    found = 0
    for path in sorted((REPO / "deploy" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "ResourceClaimTemplate":
                doc["metadata"]["namespace"] = NAMESPACE  # the suite's namespace; the examples name their own
                custom(api).create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, "resourceclaimtemplates", doc, dry_run="All"
                )
                found += 1
    assert found >= 2


# ----- achieved shares through the runtime: the interposer in the containers, metered by the fake device -------------


def workload_pod(
    stack: DraStack, name: str, template: str, device: Path, argv: Sequence[str], start: Path | None = None
) -> dict[str, Any]:
    """A pod running the C workload on the fake AscendCL (libflexnpu reaches it through the CDI spec's mounts)."""
    command, env = workload_container(stack.native, device, argv, start)
    return claim_pod(name, template, command, env)


def finished(stack: DraStack, core: Any, name: str, timeout: float = 180) -> Any:
    def phase() -> Any:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        if pod.status.phase == "Failed":
            [record] = records_of(stack.node.cri_records, NAMESPACE, name)
            raise AssertionError(f"pod {name} failed: {container_log(record)[-2000:]}")
        return pod if pod.status.phase == "Succeeded" else None

    return wait_for(f"pod {name} Succeeded", phase, timeout, watch=stack.cluster.procs, interval=0.5)


def pid_of(stack: DraStack, pod: str) -> int:
    [record] = records_of(stack.node.cri_records, NAMESPACE, pod)
    pid: int = wait_for(f"process of {pod}", lambda: process_pid(stack.node.cri_records, record), 60)
    return pid


def charged_us(stack: DraStack, api: k8s.ApiClient, core: Any, pods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """flexnpud's registration of each pod, taken when it was first seen charged device time."""
    out: dict[str, dict[str, Any]] = {}

    def all_charged() -> dict[str, dict[str, Any]] | None:
        for pod in pods:
            if pod in out:
                continue
            registration = registration_of(stack, pod_claim(api, core, pod))
            if registration is not None and float(registration.get("device_time_us", 0)) > 0:
                out[pod] = registration
        return out if len(out) == len(pods) else None

    return wait_for("device time charged to every pod", all_charged, 60, watch=stack.cluster.procs, interval=0.2)


def share_run(
    stack: DraStack, api: k8s.ApiClient, core: Any, name: str, split: Mapping[int, str | None]
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """One pod per (units, priority) of ``split`` on card 0, all saturating with the same kernels (8 s of 1-5 ms
    kernels, no host gaps), started together once every pod's process is up: each pod's share of the device time
    where all of them ran, measured by the fake device, which nothing in the runtime reads; and each pod's flexnpud
    registration."""
    device = stack.work / f"fakedev-{name}"
    device.unlink(missing_ok=True)
    start = stack.work / f"start-{name}"
    start.unlink(missing_ok=True)
    pods = {}
    for i, (units, priority) in enumerate(split.items()):
        template = f"{name}-{units}"
        create_template(api, claim_template(template, units, "8Gi", priority, card=0))
        pods[f"{name}-{units}"] = template
        argv = [a.format(seed=101 + i) for a in SATURATING]
        core.create_namespaced_pod(NAMESPACE, workload_pod(stack, f"{name}-{units}", template, device, argv, start))
        # One pod bound before the next is created: kube-scheduler v1.37.2 can count a shared device's consumed
        # capacity twice while the claim of the pod before is both in its assume cache and still in flight (its
        # PreBind assumes the claim, then drops it from the in-flight claims), and the next pod of the same card is
        # then unschedulable with no event to retry it until its unschedulable-pods flush (5 minutes). README: DRA.
        bound(stack, core, f"{name}-{units}")
    try:
        for pod in pods:
            running(stack, core, pod)
        pids = {pid_of(stack, pod): pod for pod in pods}
        open_gate(start)
        registrations = charged_us(stack, api, core, list(pods))
        for pod in pods:
            [record] = records_of(stack.node.cri_records, NAMESPACE, pod)
            problems = enforcement_problems(stack.node.cri_records, record, registrations[pod]["flexnpu_id"])
            assert not problems, f"{pod}: {problems}"
        for pod in pods:
            finished(stack, core, pod)
        busy = device_time(device, pids)
        total = sum(busy.values())
        return {pod: busy[pod] / total for pod in pods}, registrations
    finally:
        for pod in pods:
            delete_pod(core, pod)


def test_two_and_eight_units_get_their_shares_through_the_interposer(
    dra: DraStack, api: k8s.ApiClient, core: Any
) -> None:
    """2 and 8 units of one card: the device time splits 2:8 (without the runtime these two pods split it 1:1)."""
    shares, _ = share_run(dra, api, core, "share", {2: None, 8: None})
    assert 0.12 <= shares["share-2"] <= 0.28, f"device time shares {shares} (targets 0.2, 0.8)"


def test_a_high_priority_pod_gets_its_share_beside_a_saturating_batch_pod(
    dra: DraStack, api: k8s.ApiClient, core: Any
) -> None:
    """3 units at priority high beside 7 units of batch, both saturating: the high pod, registered high from its
    claim's opaque config, gets its 30% (served first while under its share, capped at it: the card's hard cap)."""
    shares, registrations = share_run(dra, api, core, "prio", {3: "high", 7: None})
    assert registrations["prio-3"]["priority"] == "high" and registrations["prio-7"]["priority"] == "normal"
    assert 0.22 <= shares["prio-3"] <= 0.38, f"device time shares {shares} (targets 0.3, 0.7)"


# ----- bad input on the real components --------------------------------------------------------------------------


def claim_events(core: Any, claim: Mapping[str, Any]) -> list[Any]:
    selector = f"involvedObject.kind=ResourceClaim,involvedObject.uid={claim['metadata']['uid']}"
    return list(core.list_namespaced_event(NAMESPACE, field_selector=selector).items)


def test_a_malformed_opaque_config_is_refused_with_an_event_and_nothing_registered(
    dra: DraStack, api: k8s.ApiClient, core: Any
) -> None:
    """Priority "urgent" in the claim's VNpuConfig: the scheduler allocates (it cannot read opaque config), the
    plugin refuses to prepare: a Warning Event on the claim names the field and the value, kubelet keeps the pod
    from starting, flexnpud has no registration and the CDI directory no spec for it."""
    create_template(api, claim_template("vnpu-urgent", 2, "8Gi", "urgent"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("urgent", "vnpu-urgent"))
    try:

        def allocated() -> Any:
            pod = core.read_namespaced_pod("urgent", NAMESPACE)
            statuses = pod.status.resource_claim_statuses or []
            if not statuses:
                return None
            claim = pod_claim(api, core, "urgent")
            return claim if claim.get("status", {}).get("allocation") else None

        claim = wait_for("claim urgent allocated", allocated, 120, watch=dra.cluster.procs, interval=0.5)
        [event] = wait_for(
            "PrepareFailed event",
            lambda: [e for e in claim_events(core, claim) if e.reason == "PrepareFailed"] or None,
            120,
            watch=dra.cluster.procs,
            interval=0.5,
        )
        assert event.type == "Warning" and "priority" in event.message and "urgent" in event.message, event.message
        assert core.read_namespaced_pod("urgent", NAMESPACE).status.phase == "Pending"
        assert registration_of(dra, claim) is None
        assert not list(dra.node.cdi_dir.glob(f"*{claim['metadata']['uid']}*"))
        assert not records_of(dra.node.cri_records, NAMESPACE, "urgent"), "kubelet started a container"
    finally:
        delete_pod(core, "urgent")


def test_zero_units_round_up_to_one_and_memory_past_hbm_is_refused_by_the_scheduler(
    dra: DraStack, api: k8s.ApiClient, core: Any
) -> None:
    """The slice's request policy (units 1..10, memory 1Mi..HBM) is the scheduler's to apply: a request below the
    range's minimum is rounded up to it (upstream's allocator, dynamic-resource-allocation structured/internal/
    experimental/consumable_capacity.go roundUpRange), so 0 units is allocated, prepared and registered as 1; a
    request past the maximum is refused with the scheduler's own reason and nothing is allocated."""
    create_template(api, claim_template("vnpu-0", 0, "8Gi"))
    create_template(api, claim_template("vnpu-too-much-memory", 1, f"{HBM_MIB + 1}Mi"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("zero", "vnpu-0"))
    core.create_namespaced_pod(NAMESPACE, claim_pod("past-hbm", "vnpu-too-much-memory"))
    try:
        message = unschedulable_reason(dra, core, "past-hbm")
        assert "cannot allocate all claims" in message or "resourceclaim" in message.lower(), message
        assert not pod_claim(api, core, "past-hbm").get("status", {}).get("allocation")
        running(dra, core, "zero")
        claim = pod_claim(api, core, "zero")
        assert allocation(claim)["consumedCapacity"][names.DRA_CAPACITY_UNITS] == "1"
        registration = registration_of(dra, claim)
        assert registration is not None and registration["aicore_alloc"] == 1
    finally:
        delete_pod(core, "zero")
        delete_pod(core, "past-hbm")
