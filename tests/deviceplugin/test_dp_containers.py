"""Pure decisions for kubelet's admission: which pod and container an Allocate is for, and its part of the cards."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flexnpu import names
from flexnpu.annotations import (
    BindPhase,
    CardAssignment,
    decode_allocated_containers,
    encode_allocated_containers,
)
from flexnpu.claims import claim_registration, parse_claim_spec, registration_id
from flexnpu.deviceplugin.core.allocation import AllocationError, ContainerRequest, PendingPod, PodRef, match_pod
from flexnpu.deviceplugin.core.containers import PodClaim, claims_for_cards, container_cards
from flexnpu.deviceplugin.core.pods import pending_pods, pod_memory, read_node_pods, read_pod_claims
from flexnpu.deviceplugin.core.response import NodeLayout, Workload, container_allocation, preload_text
from flexnpu.deviceplugin.settings import DevicePluginSettings
from flexnpu.errors import ConfigError, ValidationError
from flexnpu.priority import Priority

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def pending(
    name: str,
    *containers: ContainerRequest,
    created: int = 0,
    bind: int | None = None,
    assignment: tuple[CardAssignment, ...] = (),
    served: frozenset[str] = frozenset(),
) -> PendingPod:
    return PendingPod(
        ref=PodRef("ns", name, f"uid-{name}"),
        containers=containers,
        phase=BindPhase.ALLOCATING if assignment else None,
        created=T0 + timedelta(seconds=created),
        bind_time=None if bind is None else T0 + timedelta(seconds=bind),
        assignment=assignment,
        served=served,
    )


def app(name: str, units: int, memory: int | None = None) -> ContainerRequest:
    return ContainerRequest(name, units, memory)


def init(name: str, units: int, memory: int | None = None) -> ContainerRequest:
    return ContainerRequest(name, units, memory, init=True)


def kubelet_admits(pods: list[PendingPod], order: list[str]) -> list[tuple[str, str]]:
    """Drive match_pod as kubelet's Allocate calls arrive for the pods in ``order``: (pod, container) served."""
    by_name = {p.ref.name: p for p in pods}
    served: list[tuple[str, str]] = []
    for name in order:
        for container in by_name[name].containers:
            matched = match_pod(by_name.values(), container.units)
            assert matched is not None and matched.next_container is not None
            served.append((matched.ref.name, matched.next_container.name))
            by_name[matched.ref.name] = matched.serving(matched.next_container)
    return served


@pytest.mark.parametrize("same_second", [False, True])
def test_twenty_same_size_pods_created_at_once_are_matched_in_creation_order(same_second: bool) -> None:
    names_ = [f"p{i:02d}" for i in range(20)]
    pods = [
        pending(
            n,
            app("main", 3),
            created=0 if same_second else i,
            bind=20 - i,
            assignment=(CardAssignment(f"c{i // 3}", i // 3, 3, 1000 + i),),
        )
        for i, n in enumerate(names_)
    ]
    random.Random(7).shuffle(pods)  # the API lists them in any order; bind order is the reverse of creation
    served = kubelet_admits(pods, names_)
    assert served == [(n, "main") for n in names_]


def test_a_pod_kubelet_is_in_the_middle_of_comes_before_an_older_one() -> None:
    older = pending("older", app("main", 3), created=0)
    current = pending("current", init("setup", 3), app("main", 3), created=5, served=frozenset({"setup"}))
    matched = match_pod([older, current], 3)
    assert matched is not None and (matched.ref.name, matched.next_container) == ("current", app("main", 3))


def test_an_allocate_goes_to_the_first_pod_whose_next_container_asks_for_that_size() -> None:
    two_containers = pending("two", app("a", 3), app("b", 2), created=0)
    small = pending("small", app("main", 2), created=1)
    matched = match_pod([two_containers, small], 2)
    assert matched is not None and matched.ref.name == "small"
    assert match_pod([two_containers.serving(app("a", 3)), small], 2) == two_containers.serving(app("a", 3))


def test_two_containers_3_and_2_units_share_the_card_and_its_memory() -> None:
    card = (CardAssignment("c1", 1, 5, 20480),)
    containers = (app("a", 3), app("b", 2))
    assert container_cards(card, containers, containers[0]) == (CardAssignment("c1", 1, 3, 12288),)
    assert container_cards(card, containers, containers[1]) == (CardAssignment("c1", 1, 2, 8192),)
    served = kubelet_admits([pending("two", *containers, assignment=card)], ["two"])
    assert served == [("two", "a"), ("two", "b")]


def test_memory_a_container_sets_is_its_own_and_the_rest_goes_to_the_others() -> None:
    card = (CardAssignment("c1", 1, 5, 16384),)
    containers = (app("a", 3, 12288), app("b", 1), app("c", 1))
    caps = [container_cards(card, containers, c)[0].memory_mib for c in containers]
    assert caps == [12288, 2048, 2048]
    assert sum(caps) <= 16384


def test_an_init_container_then_an_app_container_of_3_reuse_the_same_units() -> None:
    card = (CardAssignment("c4", 4, 3, 12288),)
    containers = (init("setup", 3), app("main", 3))
    assert container_cards(card, containers, containers[0]) == card
    assert container_cards(card, containers, containers[1]) == card
    later = pending("later", app("main", 3), created=9)
    served = kubelet_admits([pending("job", *containers, assignment=card), later], ["job", "later"])
    assert served == [("job", "setup"), ("job", "main"), ("later", "main")]


def test_a_restartable_init_container_keeps_running_beside_the_app_containers() -> None:
    card = (CardAssignment("c1", 1, 5, 10000),)
    containers = (ContainerRequest("sidecar", 2), app("main", 3))  # init=False: restartPolicy Always
    assert container_cards(card, containers, containers[0]) == (CardAssignment("c1", 1, 2, 4000),)
    assert container_cards(card, containers, containers[1]) == (CardAssignment("c1", 1, 3, 6000),)


def test_whole_cards_are_split_card_by_card_in_container_order() -> None:
    cards = (CardAssignment("c0", 0, 10, 65536), CardAssignment("c1", 1, 10, 65536))
    even = (app("a", 10), app("b", 10))
    assert container_cards(cards, even, even[1]) == (CardAssignment("c1", 1, 10, 65536),)
    uneven = (app("a", 15), app("b", 5))
    assert container_cards(cards, uneven, uneven[0]) == (
        CardAssignment("c0", 0, 10, 65536),
        CardAssignment("c1", 1, 5, 32768),
    )
    assert container_cards(cards, uneven, uneven[1]) == (CardAssignment("c1", 1, 5, 32768),)


def test_an_assignment_smaller_than_the_containers_is_refused() -> None:
    containers = (app("a", 3), app("b", 3))
    with pytest.raises(AllocationError, match="ask for 6 unit"):
        container_cards((CardAssignment("c1", 1, 5, 100),), containers, containers[1])


def manifest(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "annotations": annotations or {},
            "creationTimestamp": "2026-12-01T12:00:00Z",
        },
        "spec": {"nodeName": "n1", **spec},
        "status": {"phase": "Pending"},
    }


def limits(units: int, memory: int | None = None) -> dict[str, Any]:
    values = {names.RESOURCE_VNPU: str(units)}
    if memory is not None:
        values[names.RESOURCE_VNPU_MEMORY] = str(memory)
    return {"resources": {"limits": values}}


def test_reading_containers_in_kubelet_order_with_the_served_ones() -> None:
    spec = {
        "initContainers": [
            {"name": "setup", **limits(4, 8192)},
            {"name": "proxy", "restartPolicy": "Always", **limits(1)},
            {"name": "no-npu"},
        ],
        "containers": [{"name": "a", **limits(3, 4096)}, {"name": "b", **limits(2, 2048)}, "garbage"],
    }
    notes = {names.ANNOTATION_ALLOCATED_CONTAINERS: "setup,proxy"}
    [node_pod] = read_node_pods([manifest("p", spec, notes)], "n1")
    pod = node_pod.pod
    assert [(c.name, c.units, c.memory_mib, c.init) for c in pod.containers] == [
        ("setup", 4, 8192, True),
        ("proxy", 1, None, False),
        ("a", 3, 4096, False),
        ("b", 2, 2048, False),
    ]
    assert pod.units == 6 and pod.memory_mib == 8192  # max(1 + 3 + 2, 4); max(4096 + 2048, 8192)
    assert pod.next_container == pod.containers[2] and pod.partly_served


@pytest.mark.parametrize(
    "spec",
    [
        {"containers": "nope"},
        {"containers": [{"name": "x", "resources": []}]},
        {"initContainers": {"a": 1}, "containers": [{"name": "y", **limits(-3)}]},
    ],
)
def test_hostile_container_lists_are_skipped_not_fatal(spec: dict[str, Any]) -> None:
    assert read_node_pods([manifest("p", spec)], "n1") == []


def test_a_spec_that_is_not_an_object_is_skipped() -> None:
    assert read_node_pods([{"metadata": {}, "spec": ["x"]}, {"spec": {"nodeName": "n1"}, "status": 3}], "n1") == []


def test_a_pod_served_in_full_is_no_longer_pending_and_bad_progress_is_a_problem() -> None:
    spec = {"containers": [{"name": "a", **limits(3)}]}
    done = {names.ANNOTATION_ALLOCATED_CONTAINERS: "a", names.ANNOTATION_BIND_PHASE: "allocated"}
    broken = {names.ANNOTATION_ALLOCATED_CONTAINERS: "x" * 100}
    pods = read_node_pods([manifest("done", spec, done), manifest("broken", spec, broken)], "n1")
    assert pending_pods(pods) == []
    assert names.ANNOTATION_ALLOCATED_CONTAINERS in pods[1].problem


@pytest.mark.parametrize(("text", "expected"), [("", frozenset()), ("a", {"a"}), (" a, b ,,c", {"a", "b", "c"})])
def test_allocated_containers_round_trip(text: str, expected: set[str]) -> None:
    assert decode_allocated_containers(text) == expected
    assert decode_allocated_containers(encode_allocated_containers(sorted(expected))) == expected


def test_allocated_containers_refuses_huge_values() -> None:
    with pytest.raises(ValidationError):
        decode_allocated_containers("a," * 40_000)


def test_pod_memory_is_none_when_no_container_sets_it() -> None:
    assert pod_memory((app("a", 3), init("i", 2))) is None


def claim(
    name: str,
    npu: object,
    *,
    pod_uid: str = "uid-p",
    uid: str = "0123abcd-ef",
    recorded: str = "",
    deleting: bool = False,
    namespace: str = "ns",
) -> dict[str, Any]:
    labels = {names.LABEL_CLAIM_POD_UID: pod_uid}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    return {"metadata": meta, "spec": {"npu": npu}, "status": {"flexnpuId": recorded} if recorded else {}}


def test_reading_the_claims_of_a_pod() -> None:
    pod = PodRef("ns", "p", "uid-p")
    items = [
        claim("p-npu1", 1),
        claim("p-npu2", 2, recorded="kept-id"),
        claim("other", 3, pod_uid="uid-q"),
        claim("p-npu5", 5, namespace="tenant-b"),  # the pod's uid, written on a claim in another namespace
        claim("gone", 4, deleting=True),
        claim("bad", "4"),
        claim("bool", True),
        "junk",
        {"metadata": 1},
    ]
    assert read_pod_claims(items, pod, "node-a") == [
        PodClaim("p-npu1", 1, registration_id("ns", "p-npu1", "0123abcd-ef")),
        PodClaim("p-npu2", 2, "kept-id"),
    ]
    assert registration_id("ns", "p-npu1", "0123abcd-ef") == "vnc.ns.p-npu1.0123abcd"


def test_a_claim_carries_the_registration_the_operator_would_make_only_when_its_spec_is_valid_for_this_node() -> None:
    pod = PodRef("ns", "p", "uid-p")
    spec = {"nodeName": "node-a", "npu": 1, "aicoreAlloc": 3, "memoryMiB": 16384, "priority": "high"}
    good = {**claim("p-npu1", 1, recorded="kept-id"), "spec": spec}
    (read,) = read_pod_claims([good], pod, "node-a")
    assert read.registration == claim_registration(parse_claim_spec(spec), "kept-id")
    assert read.registration is not None and read.registration.to_body()["aicore_alloc"] == 3
    other_node = {**good, "spec": {**spec, "nodeName": "node-b"}}
    hostile = [{**good, "spec": {**spec, "aicoreAlloc": bad}} for bad in (0, -1, 1e400, float("nan"), "3", True, None)]
    hostile += [{**good, "spec": {**spec, key: "\ud800"}} for key in ("aicoreAlloc", "nodeName", "priority", "entity")]
    for item in [other_node, *hostile]:
        (read,) = read_pod_claims([item], pod, "node-a")
        assert (read.flexnpu_id, read.registration) == ("kept-id", None)


def test_registration_ids_follow_the_containers_cards_or_are_empty_until_every_card_has_one() -> None:
    claims = [PodClaim("p-npu1", 1, "id1"), PodClaim("p-npu0", 0, "id0")]
    cards = (CardAssignment("c0", 0, 10, 1), CardAssignment("c1", 1, 10, 1))
    assert tuple(c.flexnpu_id for c in claims_for_cards(claims, cards)) == ("id0", "id1")
    assert claims_for_cards(claims[:1], cards) == ()
    assert claims_for_cards(claims, ()) == ()
    assert claims_for_cards(claims, cards) == (claims[1], claims[0])


def test_the_response_carries_the_interposer_and_the_registration_id() -> None:
    layout = NodeLayout(
        units_per_card=10,
        interposer_host_path="/opt/x/libflexnpu.so",
        interposer_pod_path="/usr/lib/flexnpu/libflexnpu.so",
        preload_host_file="/opt/x/preload",
    )
    response = container_allocation(
        [CardAssignment("c1", 1, 3, 4096)], Workload(Priority.HIGH, "ns/p", ("vnc.ns.p.0123abcd",)), layout
    )
    env = response.env()
    assert (env[names.ENV_ID], env[names.ENV_CLAIM], env[names.ENV_SHIM_DIR]) == (
        "vnc.ns.p.0123abcd",
        "vnc.ns.p.0123abcd",
        names.SHIM_SOCKET_DIR,
    )
    mounts = {m.container_path: (m.host_path, m.read_only) for m in response.mounts}
    assert mounts["/etc/ld.so.preload"] == ("/opt/x/preload", True)
    assert mounts["/usr/lib/flexnpu/libflexnpu.so"] == ("/opt/x/libflexnpu.so", True)
    assert preload_text(layout) == "/usr/lib/flexnpu/libflexnpu.so\n"
    without = container_allocation(
        [CardAssignment("c1", 1, 3, 4096)],
        Workload(Priority.HIGH, "ns/p"),
        NodeLayout(units_per_card=10, interposer=False),
    )
    assert names.ENV_ID not in without.env() and without.env()[names.ENV_CLAIM] == "ns/p"
    assert "/etc/ld.so.preload" not in {m.container_path for m in without.mounts}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("preload_host_file", "relative/preload"),
        ("interposer_host_path", "/a/../b.so"),
        ("interposer_pod_path", "/etc/ld.so.preload"),
        ("interposer_pod_path", "/lib/a b.so"),
        ("shim_socket_dir", "/run/x:y"),
        ("claim_wait", -1.0),
        ("claim_wait", float("nan")),
        ("claim_wait", 31.0),
    ],
)
def test_bad_interposer_settings_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        DevicePluginSettings(kubernetes=False, **{key: value})  # type: ignore[arg-type]
    assert key in str(raised.value)


def test_quantities_in_the_api_servers_canonical_form_are_read() -> None:
    # The API server stores a request of 2000 as "2k"; kmock never canonicalises, the real one does.
    from flexnpu.deviceplugin.core.pods import container_requests

    spec = {
        "containers": [
            {"name": "a", "resources": {"limits": {names.RESOURCE_VNPU: "2", names.RESOURCE_VNPU_MEMORY: "2k"}}},
            {"name": "b", "resources": {"limits": {names.RESOURCE_VNPU: "1", names.RESOURCE_VNPU_MEMORY: "1500m"}}},
        ]
    }
    assert container_requests(spec) == (ContainerRequest("a", 2, 2000), ContainerRequest("b", 1, None))
