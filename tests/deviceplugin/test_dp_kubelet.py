"""The plugin against a kubelet stub speaking v1beta1 over unix sockets, with kmock as the API server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from dp_fakes import NODE, KubeEmulator, eight_cards, write_inventory

from flexnpu import names
from flexnpu.annotations import CardAssignment, decode_assignment, decode_inventory, encode_assignment
from flexnpu.deviceplugin.core.response import NodeLayout
from flexnpu.deviceplugin.kube import KubeApi
from flexnpu.deviceplugin.plugin import PREFERRED_TTL_S, VnpuPlugin
from flexnpu.discovery import InventoryFileScanner
from flexnpu.units import UnitsConfig, card_uuid_from_bus_id, parse_device_id
from flexnpu_testsupport.kubeletstub import StubKubelet

CARD = {i: card_uuid_from_bus_id(f"0000:{0xC1 + i:02X}:00.0") for i in range(8)}


def cards_of(ids: list[str]) -> set[str]:
    return {parse_device_id(i)[0] for i in ids}


def allocating(card: int, units: int, memory: int, bind_time: str = "2026-01-01T00:00:01.000000Z") -> dict[str, str]:
    return {
        names.ANNOTATION_BIND_PHASE: "allocating",
        names.ANNOTATION_BIND_TIME: bind_time,
        names.ANNOTATION_ASSIGNED: encode_assignment([CardAssignment(CARD[card], card, units, memory)]),
    }


def test_registers_after_serving(kubelet: StubKubelet, run_plugin: Any) -> None:
    running = run_plugin()
    request = kubelet.wait_for_registration()
    assert (request.version, request.resource_name) == ("v1beta1", "huawei.com/vnpu")
    assert request.endpoint == names.PLUGIN_SOCKET_NAME
    assert request.options.get_preferred_allocation_available
    assert kubelet.options is not None and kubelet.options.get_preferred_allocation_available
    assert not kubelet.options.pre_start_required
    assert running.server.socket_path.is_socket()


def test_reregisters_after_kubelet_restart(kubelet: StubKubelet, run_plugin: Any) -> None:
    run_plugin()
    kubelet.wait_for_registration()
    for restart in (2, 3):
        kubelet.restart()
        request = kubelet.wait_for_registration(restart, timeout=5)
        assert request.resource_name == "huawei.com/vnpu"
        assert len(kubelet.devices) == 80


def test_list_and_watch_lists_units_of_every_card(kubelet: StubKubelet, run_plugin: Any) -> None:
    run_plugin(units=UnitsConfig(units_per_card=10, oversubscription=1.5))
    kubelet.wait_for_registration()
    devices = kubelet.devices
    assert len(devices) == 8 * 15
    assert {d.health for d in devices} == {"Healthy"}
    assert [d.ID for d in devices[:2]] == [f"{CARD[0]}-0", f"{CARD[0]}-1"]
    assert {parse_device_id(d.ID)[0] for d in devices} == set(CARD.values())
    assert all(len(d.ID) <= 63 for d in devices)


def test_health_transitions_follow_the_card(kubelet: StubKubelet, run_plugin: Any, tmp_path: Path) -> None:
    running = run_plugin()
    kubelet.wait_for_registration()
    write_inventory(tmp_path / "inventory.yaml", eight_cards({3: "Unhealthy"}))
    assert running.plugin.rescan()

    def card3(health: str) -> Any:
        return lambda devices: {d.health for d in devices if d.ID.startswith(CARD[3] + "-")} == {health}

    devices = kubelet.wait_for_devices(card3("Unhealthy"))
    assert sum(d.health == "Healthy" for d in devices) == 70
    write_inventory(tmp_path / "inventory.yaml", eight_cards())
    running.plugin.rescan()
    kubelet.wait_for_devices(card3("Healthy"))
    assert not running.plugin.rescan()  # no change, no update


def test_preferred_allocation_and_allocate_on_the_assigned_card(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    k8s.create_pod("infer", 3, annotations={**allocating(5, 3, 16384), names.ANNOTATION_PRIORITY: "high"})
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    free = kubelet.free_ids()
    assert cards_of(kubelet.preferred(free, [], 3)) == {CARD[5]}
    ids, response = kubelet.allocate_units(3)
    assert cards_of(ids) == {CARD[5]} and len(ids) == 3
    assert dict(response.envs) == {
        "ASCEND_VISIBLE_DEVICES": "5",
        "ASCEND_RT_VISIBLE_DEVICES": "0",
        "FLEXNPU_CARD": CARD[5],
        "FLEXNPU_CARD_INDEX": "5",
        "FLEXNPU_UNITS": "3",
        "FLEXNPU_UNITS_PER_CARD": "10",
        "FLEXNPU_SHARE": "0.3",
        "FLEXNPU_MEMORY_MIB": "16384",
        "FLEXNPU_PRIORITY": "high",
        "FLEXNPU_CLAIM": "default/infer",
        "FLEXNPU_SOCKET": f"{names.SHIM_SOCKET_DIR}/{names.SHIM_SOCKET_NAME}",
        "FLEXNPU_SHIM_DIR": names.SHIM_SOCKET_DIR,
    }  # no PYTHONPATH by default: it would replace the image's own (NodeLayout.python_path)
    assert [(d.container_path, d.host_path, d.permissions) for d in response.devices] == [
        ("/dev/davinci5", "/dev/davinci5", "rw"),
        ("/dev/davinci_manager", "/dev/davinci_manager", "rw"),
        ("/dev/devmm_svm", "/dev/devmm_svm", "rw"),
        ("/dev/hisi_hdc", "/dev/hisi_hdc", "rw"),
    ]
    mounts = {m.container_path: (m.host_path, m.read_only) for m in response.mounts}
    assert {p: mounts[p] for p in names.ASCEND_DRIVER_MOUNTS} == {p: (p, True) for p in names.ASCEND_DRIVER_MOUNTS}
    assert mounts[names.SHIM_RUNTIME_POD_DIR] == (names.SHIM_RUNTIME_HOST_DIR, True)
    assert mounts[names.SHIM_SOCKET_DIR] == (names.SHIM_SOCKET_DIR, True)
    assert mounts[names.INTERPOSER_POD_PATH] == (names.INTERPOSER_HOST_PATH, True)
    assert mounts[names.PRELOAD_POD_FILE] == (names.PRELOAD_HOST_FILE, True)
    assert len(mounts) == len(names.ASCEND_DRIVER_MOUNTS) + 4
    assert list(response.cdi_devices) == []
    running.settle()  # the handshake's writes land off the Allocate path
    annotations = k8s.annotations("pod", "infer")
    assert annotations[names.ANNOTATION_BIND_PHASE] == "allocated"
    assert decode_assignment(annotations[names.ANNOTATION_ASSIGNED]) == (CardAssignment(CARD[5], 5, 3, 16384),)


def pod_lists(k8s: KubeEmulator) -> int:
    """How many times the API emulator was asked to list pods."""
    return sum(1 for r in k8s.emulator._requests if r.method.value == "GET" and r.url.path == "/api/v1/pods")


def test_allocate_of_the_offered_ids_reuses_the_pod_found_for_them(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    k8s.create_pod("serve", 3, annotations=allocating(5, 3, 16384))
    k8s.create_pod("batch", 4, annotations=allocating(6, 4, 8192, "2026-01-01T00:00:02.000000Z"))
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    before = pod_lists(k8s)
    offered = kubelet.preferred(kubelet.free_ids(), [], 3)
    response = kubelet.allocate(offered)
    assert pod_lists(k8s) == before + 1  # the Allocate of the offered IDs found its pod without a second list
    assert dict(response.envs)["FLEXNPU_CLAIM"] == "default/serve"
    running.settle()  # the handshake's writes land off the Allocate path
    assert k8s.annotations("pod", "serve")[names.ANNOTATION_BIND_PHASE] == "allocated"

    kubelet.preferred(kubelet.free_ids(), [], 4)
    other = [i for i in kubelet.free_ids() if parse_device_id(i)[0] == CARD[6]][-4:]  # kubelet chose other IDs
    response = kubelet.allocate(other)
    assert pod_lists(k8s) == before + 3  # not the offered IDs: the pods are listed again
    assert dict(response.envs)["FLEXNPU_CLAIM"] == "default/batch"


def pod_list_selectors(k8s: KubeEmulator) -> list[str]:
    """The field selector of every pod list the API emulator was asked for, in order."""
    return [
        r.url.query.get("fieldSelector", "")
        for r in k8s.emulator._requests
        if r.method.value == "GET" and r.url.path == "/api/v1/pods"
    ]


def test_kubelet_calls_list_only_the_nodes_pending_pods_and_the_usage_figures_every_pod(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    k8s.create_pod("serve", 3, annotations=allocating(5, 3, 16384))
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    before = len(pod_list_selectors(k8s))
    kubelet.allocate(kubelet.preferred(kubelet.free_ids(), [], 3))
    running.plugin.refresh_usage()
    # GetPreferredAllocation's list (the Allocate of its IDs reuses its pod), then the usage figures' list: a
    # node's running pods are not read on kubelet's path, as kubelet admits pending pods only
    assert pod_list_selectors(k8s)[before:] == [
        f"spec.nodeName={NODE},status.phase=Pending",
        f"spec.nodeName={NODE}",
    ]


def test_an_offer_older_than_its_time_to_live_is_not_reused(
    k8s: KubeEmulator, kube_api: KubeApi, tmp_path: Path
) -> None:
    k8s.create_pod("serve", 3, annotations=allocating(5, 3, 16384))
    now = [100.0]
    plugin = VnpuPlugin(
        InventoryFileScanner(write_inventory(tmp_path / "inventory.yaml", eight_cards())),
        UnitsConfig(),
        NodeLayout(10),
        kube=kube_api,
        clock=lambda: now[0],
    )
    plugin.rescan()
    offered = plugin.preferred([d.id for d in plugin.devices()[1]], [], 3)
    before = pod_lists(k8s)
    now[0] += PREFERRED_TTL_S + 1
    allocation = plugin.allocate(offered)
    assert pod_lists(k8s) == before + 1  # too old: listed again
    assert allocation.pod is not None and allocation.pod.ref.name == "serve"


def test_allocate_two_whole_cards(kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi) -> None:
    assigned = [CardAssignment(CARD[4], 4, 10, 65536), CardAssignment(CARD[6], 6, 10, 65536)]
    k8s.create_pod(
        "train",
        20,
        annotations={
            names.ANNOTATION_BIND_PHASE: "allocating",
            names.ANNOTATION_BIND_TIME: "2026-01-01T00:00:01.000000Z",
            names.ANNOTATION_ASSIGNED: encode_assignment(assigned),
        },
    )
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    ids, response = kubelet.allocate_units(20)
    assert cards_of(ids) == {CARD[4], CARD[6]}
    envs = dict(response.envs)
    assert (envs["ASCEND_VISIBLE_DEVICES"], envs["ASCEND_RT_VISIBLE_DEVICES"]) == ("4,6", "0,1")
    assert (envs["FLEXNPU_CARD_INDEX"], envs["FLEXNPU_UNITS"], envs["FLEXNPU_SHARE"]) == ("4,6", "20", "1")
    assert [d.container_path for d in response.devices][:2] == ["/dev/davinci4", "/dev/davinci6"]
    running.settle()  # the handshake's writes land off the Allocate path
    assert k8s.annotations("pod", "train")[names.ANNOTATION_BIND_PHASE] == "allocated"


def test_pod_without_assignment_gets_a_best_fit_card_recorded_on_it(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    # Card 2 is already 6/10 used: a 4-unit pod fits exactly there (best fit), not on an empty card.
    kubelet.allocated.update(f"{CARD[2]}-{k}" for k in range(6))
    k8s.create_pod("unplaced", 4, memory_mib=8192)
    ids, response = kubelet.allocate_units(4)
    assert cards_of(ids) == {CARD[2]}
    assert dict(response.envs)["ASCEND_VISIBLE_DEVICES"] == "2"
    running.settle()  # the handshake's writes land off the Allocate path
    annotations = k8s.annotations("pod", "unplaced")
    assert annotations[names.ANNOTATION_BIND_PHASE] == "allocated"
    assert decode_assignment(annotations[names.ANNOTATION_ASSIGNED]) == (CardAssignment(CARD[2], 2, 4, 8192),)


def test_two_pods_back_to_back_each_get_their_own_card(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    k8s.create_pod("second", 5, annotations=allocating(7, 5, 1000, "2026-01-01T00:00:02.000000Z"))
    k8s.create_pod("first", 5, annotations=allocating(1, 5, 2000, "2026-01-01T00:00:01.000000Z"))
    running = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    first_ids, first = kubelet.allocate_units(5)
    second_ids, second = kubelet.allocate_units(5)
    assert (cards_of(first_ids), cards_of(second_ids)) == ({CARD[1]}, {CARD[7]})
    assert (dict(first.envs)["FLEXNPU_CLAIM"], dict(second.envs)["FLEXNPU_CLAIM"]) == (
        "default/first",
        "default/second",
    )
    running.settle()  # the handshake's writes land off the Allocate path
    assert {k8s.annotations("pod", p)[names.ANNOTATION_BIND_PHASE] for p in ("first", "second")} == {"allocated"}


def test_assignment_on_an_unhealthy_card_fails_the_pod(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi
) -> None:
    k8s.create_pod("unlucky", 2, annotations=allocating(3, 2, 1024))
    running = run_plugin(eight_cards({3: "Unhealthy"}), kube=kube_api)
    kubelet.wait_for_registration()
    try:
        kubelet.allocate_units(2)
    except Exception as exc:  # grpc.RpcError: FAILED_PRECONDITION with the reason
        assert "Unhealthy" in str(exc)
    else:
        raise AssertionError("Allocate on an unhealthy assigned card succeeded")
    running.settle()  # the handshake's writes land off the Allocate path
    annotations = k8s.annotations("pod", "unlucky")
    assert annotations[names.ANNOTATION_BIND_PHASE] == "failed"
    assert "Unhealthy" in annotations[names.ANNOTATION_BIND_REASON]


def test_node_inventory_published_at_start_and_on_change(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi, tmp_path: Path
) -> None:
    running = run_plugin(kube=kube_api)
    inventory = decode_inventory(k8s.annotations("node", NODE)[names.ANNOTATION_INVENTORY])
    assert [c.uuid for c in inventory.cards] == [CARD[i] for i in range(8)]
    assert inventory.units.units_per_card == 10
    write_inventory(tmp_path / "inventory.yaml", eight_cards({0: "Unhealthy"}))
    running.plugin.rescan()
    inventory = decode_inventory(k8s.annotations("node", NODE)[names.ANNOTATION_INVENTORY])
    assert not inventory.cards[0].healthy and inventory.cards[1].healthy


def test_plugin_restart_leaves_running_pods_untouched(
    kubelet: StubKubelet, run_plugin: Any, k8s: KubeEmulator, kube_api: KubeApi, tmp_path: Path
) -> None:
    k8s.create_pod("running", 3, annotations=allocating(5, 3, 16384))
    first = run_plugin(kube=kube_api)
    kubelet.wait_for_registration()
    ids, _ = kubelet.allocate_units(3)
    k8s.request("PATCH", "/api/v1/namespaces/default/pods/running", {"status": {"phase": "Running"}})
    before = k8s.pod("running")
    first.stop()
    second_api = KubeApi.connect(NODE, tmp_path / "kubeconfig")
    run_plugin(kube=second_api)
    kubelet.wait_for_registration(2)
    after = k8s.pod("running")
    assert json.dumps(after["metadata"]["annotations"], sort_keys=True) == json.dumps(
        before["metadata"]["annotations"], sort_keys=True
    )
    assert set(ids) <= {d.ID for d in kubelet.devices if d.health == "Healthy"}
    assert kubelet.allocated == set(ids)


@pytest.mark.parametrize("size", [-1, 0, 81])
def test_preferred_allocation_of_a_size_kubelet_cannot_ask_is_invalid(
    kubelet: StubKubelet, run_plugin: Any, size: int
) -> None:
    run_plugin()
    kubelet.wait_for_registration()
    with pytest.raises(grpc.RpcError) as raised:
        kubelet.preferred(kubelet.free_ids(), [], size)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"allocation_size={size}" in str(raised.value.details())


def test_preferred_allocation_must_include_only_available_ids(kubelet: StubKubelet, run_plugin: Any) -> None:
    run_plugin()
    kubelet.wait_for_registration()
    free = kubelet.free_ids()
    with pytest.raises(grpc.RpcError) as raised:
        kubelet.preferred(free[1:], free[:1], 2)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = str(raised.value.details())
    assert "must_include_deviceIDs" in details and free[0] in details


@pytest.mark.parametrize("id_of", [lambda k: f"{CARD[k % 8]}-{k // 8}", lambda k: f"no-such-card-{k:05d}"])
def test_an_allocate_of_ten_thousand_ids_is_refused_with_a_short_reason(
    kubelet: StubKubelet, run_plugin: Any, id_of: Any
) -> None:
    run_plugin()
    kubelet.wait_for_registration()
    ids = [id_of(k) for k in range(10_000)]
    with pytest.raises(grpc.RpcError) as raised:
        kubelet.allocate(ids)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # not RESOURCE_EXHAUSTED: the reason arrives
    details = str(raised.value.details())
    assert len(details) <= 1200 and "10000" in details


def test_python_path_only_where_asked_and_then_the_runtime_directory() -> None:
    from flexnpu.annotations import CardAssignment
    from flexnpu.containeredits import NodeLayout, Workload, container_allocation
    from flexnpu.priority import Priority

    card = (CardAssignment(uuid="u", index=0, units=3, memory_mib=1000),)
    plain = container_allocation(card, Workload(Priority.NORMAL, "ns/p"), NodeLayout(units_per_card=10)).env()
    asked = container_allocation(
        card, Workload(Priority.NORMAL, "ns/p"), NodeLayout(units_per_card=10, python_path=True)
    ).env()
    assert "PYTHONPATH" not in plain
    assert asked["PYTHONPATH"] == names.SHIM_RUNTIME_POD_DIR
    assert {k: v for k, v in asked.items() if k != "PYTHONPATH"} == plain
