"""Whole pods admitted as the real kubelet admits them (the stub's ``admit_pods``), kmock as the API server.

Each container must get its own pod's card, memory cap, priority and registration id, whatever the bind order,
with several containers, init containers whose units are reused, and a plugin restarted half-way through a pod.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from dp_fakes import NODE, KubeEmulator, eight_cards, write_inventory

from flexnpu import names
from flexnpu.annotations import CardAssignment, decode_assignment, encode_assignment
from flexnpu.claims import registration_id
from flexnpu.daemonclient import DaemonClient
from flexnpu.deviceplugin.core.response import NodeLayout
from flexnpu.deviceplugin.kube import KubeApi, KubeError
from flexnpu.deviceplugin.plugin import CLAIMS_RETRY_S, VnpuPlugin
from flexnpu.discovery import InventoryFileScanner
from flexnpu.units import UnitsConfig, card_uuid_from_bus_id, parse_device_id
from flexnpu_testsupport.kubeletstub import StubKubelet
from flexnpu_testsupport.operatorkit import DaemonProcess
from flexnpu_testsupport.waiting import free_port

CARD = {i: card_uuid_from_bus_id(f"0000:{0xC1 + i:02X}:00.0") for i in range(8)}
CLAIMS = f"/apis/{names.CRD_GROUP}/{names.CRD_VERSION}/namespaces/default/{names.CRD_PLURAL}"


@pytest.fixture
def with_claims(k8s: KubeEmulator) -> KubeEmulator:
    async def declare() -> None:
        k8s.emulator.resources[f"{names.CRD_GROUP}/{names.CRD_VERSION}/{names.CRD_PLURAL}"] = kmock.ResourceInfo(
            kind=names.CRD_KIND, namespaced=True, singular=names.CRD_SINGULAR, verbs={"list", "get", "create"}
        )

    asyncio.run_coroutine_threadsafe(declare(), k8s.loop).result(timeout=10)
    return k8s


def container(name: str, units: int, memory: int | None = None, **extra: Any) -> dict[str, Any]:
    limits = {names.RESOURCE_VNPU: str(units)}
    if memory is not None:
        limits[names.RESOURCE_VNPU_MEMORY] = str(memory)
    return {"name": name, "image": "app", "resources": {"limits": limits}, **extra}


def create_pod(
    k8s: KubeEmulator,
    name: str,
    containers: list[dict[str, Any]],
    *,
    created: str,
    init: list[dict[str, Any]] | None = None,
    assigned: list[CardAssignment] | None = None,
    bind_time: str = "2026-12-01T12:00:00.000000Z",
    priority: str = "normal",
    extra_notes: dict[str, str] | None = None,
) -> dict[str, Any]:
    notes = {names.ANNOTATION_PRIORITY: priority, **(extra_notes or {})}
    if assigned:
        notes |= {
            names.ANNOTATION_BIND_PHASE: "allocating",
            names.ANNOTATION_BIND_TIME: bind_time,
            names.ANNOTATION_ASSIGNED: encode_assignment(assigned),
        }
    spec: dict[str, Any] = {"nodeName": NODE, "containers": containers}
    if init:
        spec["initContainers"] = init
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": notes,
        },
        "spec": spec,
        "status": {"phase": "Pending"},
    }
    result: dict[str, Any] = k8s.request("POST", "/api/v1/namespaces/default/pods", body)
    return result


def create_claim(k8s: KubeEmulator, name: str, pod: str, npu: int, flexnpu_id: str = "", **spec: Any) -> None:
    body: dict[str, Any] = {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"claim-uid-{name}",
            "labels": {names.LABEL_CLAIM_POD_UID: f"uid-{pod}"},
        },
        "spec": {"nodeName": NODE, "npu": npu, **spec},
    }
    if flexnpu_id:
        body["status"] = {"flexnpuId": flexnpu_id}
    k8s.request("POST", CLAIMS, body)


def card_of(response: Any) -> str:
    return str(dict(response.envs)["FLEXNPU_CARD"])


def test_twenty_same_size_pods_created_at_once_each_get_their_own_card_cap_priority_and_claim(
    kubelet: StubKubelet,
    run_plugin: Any,
    with_claims: KubeEmulator,
    kube_api: KubeApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="flexnpu.deviceplugin.plugin")
    k8s = with_claims
    pods = []
    for i in range(20):
        name = f"p{i:02d}"
        card, priority = i // 3, ("high", "normal", "low")[i % 3]
        # Created one second apart, bound in the reverse order (the old matching went by bind time).
        pods.append(
            create_pod(
                k8s,
                name,
                [container("main", 3)],
                created=f"2026-12-01T12:00:{i:02d}Z",
                assigned=[CardAssignment(CARD[card], card, 3, 4000 + i)],
                priority=priority,
                bind_time=f"2026-12-01T12:01:{59 - i:02d}.000000Z",
            )
        )
        create_claim(k8s, name, name, card, flexnpu_id=f"id-{name}" if i % 2 else "")
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    admitted = kubelet.admit_pods(pods)
    running.settle()  # the handshake's writes land off the Allocate path
    for i in range(20):
        name = f"p{i:02d}"
        env = dict(admitted[name]["main"].envs)
        expected_id = f"id-{name}" if i % 2 else registration_id("default", name, f"claim-uid-{name}")
        assert (
            env["FLEXNPU_CARD"],
            env["FLEXNPU_MEMORY_MIB"],
            env["FLEXNPU_PRIORITY"],
            env["FLEXNPU_ID"],
            env["FLEXNPU_CLAIM"],
        ) == (CARD[i // 3], str(4000 + i), ("high", "normal", "low")[i % 3], expected_id, expected_id), name
        # The plugin's log says which pod each Allocate was matched to, and what it injected.
        [line] = [r.getMessage() for r in caplog.records if f"pod default/{name} container main" in r.getMessage()]
        assert f"{i // 3}:3u/{4000 + i}MiB" in line and f"FLEXNPU_ID={expected_id}" in line, line
        notes = k8s.annotations("pod", name)
        assert (notes[names.ANNOTATION_BIND_PHASE], notes[names.ANNOTATION_ALLOCATED_CONTAINERS]) == (
            "allocated",
            "main",
        )


def test_two_containers_of_3_and_2_units_each_get_their_part_of_the_card(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    pod = create_pod(
        k8s,
        "two",
        [container("a", 3), container("b", 2)],
        created="2026-12-01T12:00:00Z",
        assigned=[CardAssignment(CARD[6], 6, 5, 20480)],
        priority="high",
    )
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    admitted = kubelet.admit(pod)
    a, b = dict(admitted["a"].envs), dict(admitted["b"].envs)
    assert (a["FLEXNPU_UNITS"], a["FLEXNPU_MEMORY_MIB"], b["FLEXNPU_UNITS"], b["FLEXNPU_MEMORY_MIB"]) == (
        "3",
        "12288",
        "2",
        "8192",
    )
    assert {a["FLEXNPU_CARD"], b["FLEXNPU_CARD"]} == {CARD[6]}
    assert a["FLEXNPU_PRIORITY"] == b["FLEXNPU_PRIORITY"] == "high"
    assert a["FLEXNPU_CLAIM"] == b["FLEXNPU_CLAIM"] == "default/two"  # no claims served by this API: the pod
    running.settle()  # the handshake's writes land off the Allocate path
    notes = k8s.annotations("pod", "two")
    assert (notes[names.ANNOTATION_BIND_PHASE], notes[names.ANNOTATION_ALLOCATED_CONTAINERS]) == ("allocated", "a,b")
    assert {parse_device_id(i)[0] for i in kubelet.allocated} == {CARD[6]} and len(kubelet.allocated) == 5


def test_an_init_container_of_3_then_an_app_container_of_3_reuse_the_units_and_keep_the_claim(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    job = create_pod(
        k8s,
        "job",
        [container("main", 3)],
        init=[container("setup", 3)],
        created="2026-12-01T12:00:05Z",
        assigned=[CardAssignment(CARD[2], 2, 3, 12288)],
        priority="low",
    )
    other = create_pod(
        k8s,
        "other",
        [container("main", 3)],
        created="2026-12-01T12:00:09Z",
        assigned=[CardAssignment(CARD[4], 4, 3, 1024)],
    )
    run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    admitted = kubelet.admit_pods([other, job])
    setup, main = dict(admitted["job"]["setup"].envs), dict(admitted["job"]["main"].envs)
    assert setup == main
    assert (main["FLEXNPU_CARD"], main["FLEXNPU_MEMORY_MIB"], main["FLEXNPU_PRIORITY"], main["FLEXNPU_CLAIM"]) == (
        CARD[2],
        "12288",
        "low",
        "default/job",
    )
    assert card_of(admitted["other"]["main"]) == CARD[4]
    assert len(kubelet.allocated) == 6  # the app container reused the init container's three IDs


def test_a_restarted_plugin_resumes_with_the_next_container_of_a_pod(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi, tmp_path: Path
) -> None:
    # A previous plugin served container "a" (recorded on the pod) and was restarted; kubelet goes on with "b".
    create_pod(
        k8s,
        "half",
        [container("a", 3), container("b", 2)],
        created="2026-12-01T12:00:09Z",
        assigned=[CardAssignment(CARD[1], 1, 5, 10000)],
        extra_notes={names.ANNOTATION_ALLOCATED_CONTAINERS: "a"},
    )
    create_pod(
        k8s,
        "older",
        [container("main", 2)],
        created="2026-12-01T12:00:00Z",
        assigned=[CardAssignment(CARD[7], 7, 2, 500)],
    )
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    _, response = kubelet.allocate_units(2)
    env = dict(response.envs)
    assert (env["FLEXNPU_CARD"], env["FLEXNPU_UNITS"], env["FLEXNPU_MEMORY_MIB"]) == (CARD[1], "2", "4000")
    running.settle()  # the handshake's writes land off the Allocate path
    notes = k8s.annotations("pod", "half")
    assert (notes[names.ANNOTATION_BIND_PHASE], notes[names.ANNOTATION_ALLOCATED_CONTAINERS]) == ("allocated", "a,b")
    assert k8s.annotations("pod", "older")[names.ANNOTATION_BIND_PHASE] == "allocating"


def test_an_unplaced_pod_with_two_containers_gets_one_best_fit_card_for_both(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    pod = create_pod(k8s, "free", [container("a", 3), container("b", 2)], created="2026-12-01T12:00:00Z")
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    kubelet.allocated.update(f"{CARD[0]}-{k}" for k in range(6))  # card 0 has room for "a" alone, not the pod
    admitted = kubelet.admit(pod)
    assert card_of(admitted["a"]) == card_of(admitted["b"]) != CARD[0]
    running.settle()  # the handshake's writes land off the Allocate path
    notes = k8s.annotations("pod", "free")
    [assigned] = decode_assignment(notes[names.ANNOTATION_ASSIGNED])
    assert (assigned.uuid, assigned.units) == (card_of(admitted["a"]), 5)
    assert notes[names.ANNOTATION_BIND_PHASE] == "allocated"


def test_an_allocate_waits_a_bounded_time_for_a_claim_that_is_not_there(
    kubelet: StubKubelet, k8s: KubeEmulator, with_claims: KubeEmulator, kube_api: KubeApi, tmp_path: Path
) -> None:
    create_pod(
        k8s,
        "late",
        [container("main", 3)],
        created="2026-12-01T12:00:00Z",
        assigned=[CardAssignment(CARD[0], 0, 3, 100)],
    )
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    scanner = InventoryFileScanner(write_inventory(tmp_path / "inv.yaml", eight_cards()))
    plugin = VnpuPlugin(
        scanner, UnitsConfig(), NodeLayout(10), kube=kube_api, clock=lambda: now[0], claim_wait=0.5, sleep=sleep
    )
    plugin.rescan()
    ids = [f"{CARD[0]}-{k}" for k in range(3)]
    allocation = plugin.allocate(ids)
    assert names.ENV_ID not in allocation.response.env()
    assert 0.5 <= sum(naps) < 0.5 + 0.1 and now[0] >= 0.5


def test_kubeconfig_from_the_environment_is_used(
    k8s: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k8s.create_node()
    config = k8s.kubeconfig(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # KUBECONFIG wins over in-cluster
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{config}")
    api = KubeApi.connect(NODE)
    try:
        assert api.node_pods() == []
    finally:
        api.close()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeError, match="cannot configure"):
        KubeApi.connect(NODE)


def test_an_exec_credential_plugin_in_the_kubeconfig_is_run(
    k8s: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    marker = tmp_path / "ran"
    helper = tmp_path / "cred.py"
    helper.write_text(
        "import json, pathlib, sys\n"
        f"pathlib.Path({str(marker)!r}).write_text('yes')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': 'secret-token'}}))\n"
    )
    config = yaml.safe_load(k8s.kubeconfig(tmp_path).read_text())
    config["users"] = [
        {
            "name": "kmock",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": sys.executable,
                    "args": [str(helper)],
                    "interactiveMode": "Never",
                }
            },
        }
    ]
    path = tmp_path / "exec-kubeconfig"
    path.write_text(json.dumps(config))
    k8s.create_node()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    api = KubeApi.connect(NODE)
    try:
        assert api.node_pods() == []
    finally:
        api.close()
    assert marker.read_text() == "yes"


def test_an_api_that_serves_no_claims_is_asked_again_only_after_a_while(
    k8s: KubeEmulator, kube_api: KubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    calls: list[str] = []
    real = kube_api.pod_claims

    def counted(pod: Any) -> Any:
        calls.append(pod.name)
        return real(pod)  # kmock serves no VNpuClaim resource here: HTTP 404

    monkeypatch.setattr(kube_api, "pod_claims", counted)
    now = [0.0]
    scanner = InventoryFileScanner(write_inventory(tmp_path / "inv.yaml", eight_cards()))
    plugin = VnpuPlugin(scanner, UnitsConfig(), NodeLayout(10), kube=kube_api, clock=lambda: now[0], claim_wait=5)
    plugin.rescan()
    for i, at in enumerate((0.0, 1.0, CLAIMS_RETRY_S + 1)):
        now[0] = at
        create_pod(
            k8s,
            f"p{i}",
            [container("main", 1)],
            created=f"2026-12-01T12:00:0{i}Z",
            assigned=[CardAssignment(CARD[i], i, 1, 100)],
        )
        allocation = plugin.allocate([f"{CARD[i]}-0"])
        assert allocation.pod is not None and allocation.pod.ref.name == f"p{i}"
        assert names.ENV_ID not in allocation.response.env()
    assert calls == ["p0", "p2"]


def test_home_kubeconfig_then_in_cluster_are_the_fallbacks(
    k8s: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k8s.create_node()
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    k8s.kubeconfig(home / ".kube").rename(home / ".kube" / "config")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(home))
    api = KubeApi.connect(NODE)
    try:
        assert api.node_pods() == []
    finally:
        api.close()
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="cannot configure"):  # in-cluster, but not in a pod
        KubeApi.connect(NODE)


@pytest.mark.parametrize("appears_after_naps", [0, 2, None])
def test_the_registrations_slot_is_mounted_read_write_once_flexnpud_has_made_it(
    k8s: KubeEmulator,
    with_claims: KubeEmulator,
    kube_api: KubeApi,
    tmp_path: Path,
    appears_after_naps: int | None,
) -> None:
    """libflexnpu maps its slot read-write: the read-only shim directory alone leaves it ungated. The slot file is
    mounted over it once flexnpud has made it (awaited up to claim_wait: a runtime refuses a missing source)."""
    create_pod(
        k8s,
        "slotted",
        [container("main", 3)],
        created="2026-12-01T12:00:00Z",
        assigned=[CardAssignment(CARD[0], 0, 3, 100)],
    )
    create_claim(k8s, "slotted", "slotted", 0, flexnpu_id="id-slotted")
    shim = tmp_path / "shim"
    shim.mkdir()
    slot = shim / names.slot_file("id-slotted")
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds
        if appears_after_naps is not None and len(naps) >= appears_after_naps:
            slot.write_bytes(b"\0" * 4096)

    if appears_after_naps == 0:
        slot.write_bytes(b"\0" * 4096)
    scanner = InventoryFileScanner(write_inventory(tmp_path / "inv.yaml", eight_cards()))
    layout = NodeLayout(10, shim_socket_dir=str(shim), slot_mount=True)
    plugin = VnpuPlugin(
        scanner, UnitsConfig(), layout, kube=kube_api, clock=lambda: now[0], claim_wait=0.5, sleep=sleep
    )
    plugin.rescan()
    allocation = plugin.allocate([f"{CARD[0]}-{k}" for k in range(3)])
    assert allocation.response.env()[names.ENV_ID] == "id-slotted"
    mounts = {m.container_path: m for m in allocation.response.mounts}
    own = mounts.get(f"{names.SHIM_SOCKET_DIR}/{slot.name}")
    if appears_after_naps is None:
        assert own is None
        assert 0.5 <= now[0] < 0.6
    else:
        assert own is not None and own.host_path == str(slot) and not own.read_only
        assert mounts[names.SHIM_SOCKET_DIR].read_only
        assert len(naps) == appears_after_naps


@pytest.mark.parametrize("case", ["registered", "refused", "unreachable"])
def test_an_allocate_registers_the_pods_claim_with_flexnpud_instead_of_awaiting_the_operator(
    k8s: KubeEmulator, with_claims: KubeEmulator, kube_api: KubeApi, tmp_path: Path, case: str
) -> None:
    """The extender creates a pod's claims right after its Binding, and kubelet may call Allocate before the
    operator registered them: the plugin registers them itself with this node's (real) flexnpud, whose slot then
    exists and is mounted, without a wait. A claim flexnpud refuses (memory past the card's HBM) runs ungated at
    once; a daemon that cannot be reached leaves the operator's register awaited, as before."""
    daemon = DaemonProcess(NODE, tmp_path)
    asyncio.run(daemon.start())
    try:
        memory = 16384 if case != "refused" else 10 * 65536
        create_pod(
            k8s,
            "early",
            [container("main", 3)],
            created="2026-12-01T12:00:00Z",
            assigned=[CardAssignment(CARD[2], 2, 3, 100)],
        )
        create_claim(k8s, "early-npu2", "early", 2, aicoreAlloc=3, memoryMiB=memory, priority="high")
        flexnpu_id = registration_id("default", "early-npu2", "claim-uid-early-npu2")
        shim = tmp_path / f"{NODE}-sock"
        naps: list[float] = []
        now = [0.0]

        def sleep(seconds: float) -> None:
            naps.append(seconds)
            now[0] += seconds

        url = daemon.url if case != "unreachable" else f"http://127.0.0.1:{free_port()}"
        plugin = VnpuPlugin(
            InventoryFileScanner(write_inventory(tmp_path / "inv.yaml", eight_cards())),
            UnitsConfig(),
            NodeLayout(10, shim_socket_dir=str(shim), slot_mount=True),
            kube=kube_api,
            clock=lambda: now[0],
            claim_wait=0.5,
            sleep=sleep,
            daemon=DaemonClient(url, token=lambda: "", timeout=5),
        )
        plugin.rescan()
        allocation = plugin.allocate([f"{CARD[2]}-{k}" for k in range(3)])
        held = json.loads(urllib.request.urlopen(f"{daemon.url}/device/flexnpu-info", timeout=5).read())
    finally:
        asyncio.run(daemon.stop())
    assert allocation.response.env()[names.ENV_ID] == flexnpu_id
    mounted = f"{names.SHIM_SOCKET_DIR}/{names.slot_file(flexnpu_id)}" in {
        m.container_path for m in allocation.response.mounts
    }
    counted = {
        s.labels["outcome"]: s.value
        for s in next(iter(plugin.metrics.slots.collect())).samples
        if s.name.endswith("_total")
    }
    held_ids = {r["flexnpu_id"]: r for r in held["registrations"]}
    if case == "registered":
        assert mounted and naps == [] and counted == {"registered": 1.0}
        assert (held_ids[flexnpu_id]["npu"], held_ids[flexnpu_id]["aicore_alloc"]) == (2, 3)
        assert held_ids[flexnpu_id]["priority"] == "high"
    elif case == "refused":
        assert not mounted and naps == [] and counted == {"refused": 1.0} and flexnpu_id not in held_ids
    else:
        assert not mounted and sum(naps) >= 0.5 and counted == {"missing": 1.0} and flexnpu_id not in held_ids
