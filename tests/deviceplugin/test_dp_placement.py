"""Pure placement decisions: units per card, best fit, whole cards on one HCCS ring, matching pods, the response."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from flexnpu import names
from flexnpu.annotations import BindPhase, CardAssignment
from flexnpu.cards import Card, Health
from flexnpu.deviceplugin.core.allocation import (
    AllocationError,
    ContainerRequest,
    PendingPod,
    PodRef,
    best_fit_card,
    best_fit_placement,
    check_preferred_request,
    choose_whole_cards,
    describe_ids,
    match_pod,
    placement_from_ids,
    preferred_ids,
)
from flexnpu.deviceplugin.core.devices import card_unit_ids, unit_devices
from flexnpu.deviceplugin.core.pods import pending_pods, read_node_pods, units_in_use
from flexnpu.deviceplugin.core.response import NodeLayout, Workload, container_allocation
from flexnpu.deviceplugin.server import MAX_DETAILS_CHARS, bounded
from flexnpu.errors import ValidationError
from flexnpu.priority import Priority
from flexnpu.units import UnitsConfig, parse_vnpu_request

U10 = UnitsConfig()


def card(i: int, health: Health = Health.HEALTHY, model: str = "910B3") -> Card:
    return Card.of_model(model, index=i, uuid=f"c{i}", health=health)


CARDS = [card(i) for i in range(8)]


@pytest.mark.parametrize(
    ("units", "count", "first", "last"),
    [
        (UnitsConfig(10, 1.0), 80, "c0-0", "c7-9"),
        (UnitsConfig(10, 2.0), 160, "c0-0", "c7-19"),
        (UnitsConfig(100, 1.5), 1200, "c0-0", "c7-149"),
        (UnitsConfig(1, 1.0), 8, "c0-0", "c7-0"),
    ],
)
def test_units_per_card_times_oversubscription(units: UnitsConfig, count: int, first: str, last: str) -> None:
    devices = unit_devices(reversed(CARDS), units)
    assert (len(devices), devices[0].id, devices[-1].id) == (count, first, last)
    assert len(card_unit_ids(CARDS[0], units)) == count // 8


def test_units_carry_their_card_health() -> None:
    devices = unit_devices([card(0), card(1, Health.UNHEALTHY)], U10)
    assert {d.health for d in devices if d.card_uuid == "c1"} == {Health.UNHEALTHY}
    assert {d.health for d in devices if d.card_uuid == "c0"} == {Health.HEALTHY}


# free units per card -> (request, chosen card index or None)
BEST_FIT = [
    ({"c0": 10, "c1": 4, "c2": 6}, 4, 1),
    ({"c0": 10, "c1": 4, "c2": 6}, 5, 2),
    ({"c0": 10, "c1": 4, "c2": 6}, 7, 0),
    ({"c0": 10, "c1": 10}, 10, 0),
    ({"c0": 3, "c1": 3}, 4, None),
    ({"c3": 5, "c1": 5}, 5, 1),
]


@pytest.mark.parametrize(("free", "units", "expected"), BEST_FIT)
def test_best_fit_takes_the_tightest_card(free: dict[str, int], units: int, expected: int | None) -> None:
    chosen = best_fit_card(CARDS, free, units)
    assert (chosen.index if chosen else None) == expected


def test_best_fit_skips_unhealthy_cards() -> None:
    cards = [card(0, Health.UNHEALTHY), card(1)]
    assert best_fit_card(cards, {"c0": 2, "c1": 10}, 2) == cards[1]


# fully free card indices -> (count, chosen indices)
WHOLE = [
    ([0, 1, 2, 3, 4, 5, 6, 7], 2, [0, 1]),  # both rings fit equally: the lower ring
    ([0, 1, 4, 5, 6, 7], 2, [0, 1]),  # ring 0 has exactly two: keep ring 1's four together
    ([0, 4, 5, 6], 2, [4, 5]),
    ([0, 1, 2, 4], 4, [0, 1, 2, 4]),  # no ring has four: the fullest ring first
    ([0, 1, 2, 3, 4, 5, 6, 7], 8, [0, 1, 2, 3, 4, 5, 6, 7]),
]


@pytest.mark.parametrize(("empty", "count", "expected"), WHOLE)
def test_whole_cards_prefer_one_hccs_ring(empty: list[int], count: int, expected: list[int]) -> None:
    free = {f"c{i}": 10 if i in empty else 3 for i in range(8)}
    assert [c.index for c in choose_whole_cards(CARDS, free, count, U10)] == expected


def test_whole_cards_refused_with_the_missing_amount() -> None:
    with pytest.raises(AllocationError, match=r"3 whole card.*2 fully free"):
        choose_whole_cards(CARDS, {"c0": 10, "c5": 10, "c6": 9}, 3, U10)


def test_best_fit_placement_memory_defaults() -> None:
    fraction = best_fit_placement(CARDS, {"c2": 10}, parse_vnpu_request(3, U10), U10)
    assert fraction == (CardAssignment("c2", 2, 3, 65536 * 3 // 10),)
    whole = best_fit_placement(CARDS, {"c0": 10, "c1": 10}, parse_vnpu_request(20, U10), U10)
    assert whole == (CardAssignment("c0", 0, 10, 65536), CardAssignment("c1", 1, 10, 65536))
    own = best_fit_placement(CARDS, {"c2": 10}, parse_vnpu_request(3, U10, 4096), U10)
    assert own[0].memory_mib == 4096


def test_placement_from_ids_takes_the_card_holding_most() -> None:
    ids = ["c3-0", "c5-1", "c5-2"]
    assert placement_from_ids(CARDS, ids, parse_vnpu_request(3, U10), U10)[0].uuid == "c5"
    with pytest.raises(AllocationError):
        placement_from_ids(CARDS, ["zz-0"], parse_vnpu_request(1, U10), U10)


@pytest.mark.parametrize(
    ("available", "must", "size", "expected"),
    [
        (["c1-0", "c2-3", "c2-1", "c2-10", "c2-2"], [], 3, ["c2-1", "c2-2", "c2-3"]),
        (["c1-0", "c2-9", "c2-10", "c2-2"], [], 3, ["c2-2", "c2-9", "c2-10"]),
        (["c1-0", "c2-1", "c2-2"], ["c1-0"], 3, ["c1-0", "c2-1", "c2-2"]),
        (["c1-0", "c1-1", "c2-1"], [], 3, ["c2-1", "c1-0", "c1-1"]),  # too few on the card: kubelet still gets 3
    ],
)
def test_preferred_ids(available: list[str], must: list[str], size: int, expected: list[str]) -> None:
    placement = (CardAssignment("c2", 2, 3, 100),)
    assert preferred_ids(placement, available, must, size, CARDS) == expected


def pod(
    name: str, units: int, phase: BindPhase | None, bind_second: int | None = None, created_second: int = 0
) -> PendingPod:
    def at(second: int) -> datetime:
        return datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)

    return PendingPod(
        ref=PodRef("ns", name, f"uid-{name}"),
        containers=(ContainerRequest("main", units),),
        phase=phase,
        bind_time=None if bind_second is None else at(bind_second),
        created=at(created_second),
    )


@pytest.mark.parametrize(
    ("pods", "units", "expected"),
    [
        # Kubelet admits by creation time, whatever the bind order.
        ([pod("a", 3, BindPhase.ALLOCATING, 2, created_second=5), pod("b", 3, BindPhase.ALLOCATING, 9, 1)], 3, "b"),
        ([pod("a", 3, BindPhase.ALLOCATING, 5), pod("b", 4, BindPhase.ALLOCATING, 2)], 3, "a"),
        ([pod("a", 3, None, created_second=1), pod("b", 3, BindPhase.ALLOCATING, 9, 2)], 3, "a"),
        ([pod("a", 3, None, created_second=7), pod("b", 3, None, created_second=4)], 3, "b"),
        ([pod("b", 3, None), pod("a", 3, None)], 3, "a"),  # same second: then namespace/name
        ([pod("a", 3, BindPhase.ALLOCATED, 1), pod("b", 3, BindPhase.FAILED, 1)], 3, None),
        ([], 3, None),
    ],
)
def test_match_pod(pods: list[PendingPod], units: int, expected: str | None) -> None:
    matched = match_pod(pods, units)
    assert (matched.ref.name if matched else None) == expected


def manifest(
    name: str, units: str, *, node: str = "n1", phase: str = "Pending", annotations: dict[str, str] | None = None
) -> Mapping[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "annotations": annotations or {}},
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": {names.RESOURCE_VNPU: units}}}]},
        "status": {"phase": phase},
    }


def test_reading_node_pods() -> None:
    allocated = {
        names.ANNOTATION_BIND_PHASE: "allocated",
        names.ANNOTATION_ASSIGNED: '[{"uuid":"c1","index":1,"units":3,"memory_mib":1}]',
    }
    items = [
        manifest("mine", "3"),
        manifest("other-node", "3", node="n2"),
        manifest("done", "3", phase="Succeeded"),
        manifest("no-units", "0"),
        manifest("running", "3", phase="Running", annotations=allocated),
        manifest("broken", "2", annotations={names.ANNOTATION_BIND_PHASE: "bogus"}),
    ]
    node_pods = read_node_pods(items, "n1")
    assert [p.pod.ref.name for p in node_pods] == ["mine", "running", "broken"]
    assert "bogus" in node_pods[2].problem
    assert [p.ref.name for p in pending_pods(node_pods)] == ["mine"]
    assert units_in_use(node_pods) == {"c1": 3}


@pytest.mark.parametrize(
    ("cdi", "shim", "devices", "cdi_names", "mounts"),
    [
        (False, True, 4, [], len(names.ASCEND_DRIVER_MOUNTS) + 4),  # + runtime, sockets, interposer, ld.so.preload
        (True, True, 0, [f"{names.CDI_KIND}=6"], 4),
        (False, False, 4, [], len(names.ASCEND_DRIVER_MOUNTS)),
    ],
)
def test_response_layouts(cdi: bool, shim: bool, devices: int, cdi_names: list[str], mounts: int) -> None:
    allocation = container_allocation(
        [CardAssignment("c6", 6, 2, 512)],
        Workload(Priority.LOW, "ns/p"),
        NodeLayout(units_per_card=10, use_cdi=cdi, inject_shim=shim),
    )
    assert (len(allocation.devices), list(allocation.cdi_devices), len(allocation.mounts)) == (
        devices,
        cdi_names,
        mounts,
    )
    envs = allocation.env()
    assert envs[names.ENV_ASCEND_VISIBLE_DEVICES] == "6"
    assert (names.ENV_PRIORITY in envs) is shim
    if shim:
        assert (envs[names.ENV_SHARE], envs[names.ENV_PRIORITY], envs[names.ENV_MEMORY_MIB]) == ("0.2", "low", "512")


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([], "0 device ID(s) ()"),
        (["b", "a"], "2 device ID(s) (a, b)"),
        ([f"c-{k:05d}" for k in range(10_000)], "10000 device ID(s) (c-00000, c-00001, c-00002, ...)"),
    ],
)
def test_describe_ids_quotes_a_few_and_counts_all(ids: list[str], expected: str) -> None:
    assert describe_ids(ids) == expected


@pytest.mark.parametrize(
    ("available", "must", "size", "field"),
    [
        (["a", "b"], [], -1, "allocation_size"),
        (["a", "b"], [], 0, "allocation_size"),
        (["a", "b"], [], 3, "allocation_size"),
        (["a", "b"], ["a", "b"], 1, "allocation_size"),
        (["a", "b"], ["z"], 1, "must_include_deviceIDs"),
    ],
)
def test_preferred_requests_kubelet_cannot_send_are_refused(
    available: list[str], must: list[str], size: int, field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        check_preferred_request(available, must, size)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("available", "must", "size"), [(["c0-0"], [], 1), (["c0-0", "c1-1"], ["c1-1"], 1), (["c0-0", "c1-1"], [], 2)]
)
def test_preferred_requests_within_bounds_are_answered_with_size_ids(
    available: list[str], must: list[str], size: int
) -> None:
    check_preferred_request(available, must, size)  # raises on a refusal
    offered = preferred_ids((), available, must, size, CARDS)
    assert len(offered) == size and set(must) <= set(offered) <= set(available)


def test_grpc_details_are_bounded() -> None:
    assert bounded("short") == "short"
    cut = bounded("x" * 100_000)
    assert cut.startswith("x" * MAX_DETAILS_CHARS) and cut.endswith(f"({100_000 - MAX_DETAILS_CHARS} more characters)")
