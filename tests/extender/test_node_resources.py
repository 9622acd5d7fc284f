"""The cluster state counts each node's allocatable CPU and memory and what every pod bound to it requests."""

from __future__ import annotations

from typing import Any

import pytest
from extender_kit import inventory, node, pod

from flexnpu.extender.core.fit import Refusal, RefusalKind, fit_node
from flexnpu.extender.core.model import PodDemand
from flexnpu.extender.informers import node_allocatable, node_record
from flexnpu.extender.pods import PodKey, pod_demand, pod_facts, pod_requests
from flexnpu.extender.state import ClusterState, ReservationConflict
from flexnpu.units import UnitsConfig, parse_vnpu_request


def watched_node(name: str, cpu: object = "16", memory: object = "64Gi") -> dict[str, Any]:
    body = node(name, inventory(2, prefix=name))
    body["status"]["allocatable"] = {"cpu": cpu, "memory": memory, "huawei.com/vnpu": "20"}
    return body


def cpu_pod(name: str, cpu: str, memory: str, node_name: str, phase: str = "Running") -> dict[str, Any]:
    body = pod(name, None, node_name=node_name, phase=phase)
    body["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu, "memory": memory}}
    return body


def state_with(*nodes: dict[str, Any]) -> ClusterState:
    state = ClusterState()
    records = {n["metadata"]["name"]: r for n in nodes if (r := node_record(n)) is not None}
    state.replace_nodes(records)
    return state


@pytest.mark.parametrize(("cpu", "memory", "expected"), [
    ("16", "64Gi", (16000, 65536)),
    ("15500m", "1000Mi", (15500, 1000)),
    ("0.5", "1G", (500, 954)),
    (4, 1048576, (4000, 1)),
    ("-1", "64Gi", (0, 65536)),  # unreadable: not tracked, never a crash
    ("NaN", "lots", (0, 0)),
    ("1e400", "64Gi", (0, 65536)),
])  # fmt: skip
def test_allocatable_cpu_and_memory_are_read_from_the_node(
    cpu: object, memory: object, expected: tuple[int, int]
) -> None:
    assert node_allocatable(watched_node("n", cpu, memory)) == expected


def test_the_state_node_carries_allocatable_cpu_and_memory() -> None:
    state = state_with(watched_node("npu-a", "16", "64Gi"))

    snapshot = state.node("npu-a")

    assert snapshot is not None
    assert (snapshot.cpu_milli_total, snapshot.host_memory_mib_total) == (16000, 65536)
    assert (snapshot.cpu_milli_used, snapshot.host_memory_mib_used) == (0, 0)


def test_a_cpu_only_pod_bound_to_a_vnpu_node_is_counted_until_it_finishes() -> None:
    state = state_with(watched_node("npu-a"))
    running = cpu_pod("batch", "6", "8Gi", "npu-a")

    state.observe_pod(pod_facts(running))
    held = state.node("npu-a")
    state.observe_pod(pod_facts({**running, "status": {"phase": "Succeeded"}}))
    done = state.node("npu-a")

    assert held is not None and (held.cpu_milli_used, held.host_memory_mib_used) == (6000, 8192)
    assert done is not None and (done.cpu_milli_used, done.host_memory_mib_used) == (0, 0)


def test_a_pending_cpu_only_pod_holds_nothing() -> None:
    state = state_with(watched_node("npu-a"))

    state.observe_pod(pod_facts(cpu_pod("batch", "6", "8Gi", "")))

    snapshot = state.node("npu-a")
    assert snapshot is not None and snapshot.cpu_milli_used == 0


def test_requests_sum_containers_take_the_largest_init_container_and_add_the_overhead() -> None:
    body = pod("vllm", 3)
    body["spec"]["containers"] = [
        {"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
        {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}}},
    ]
    body["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}]
    body["spec"]["overhead"] = {"cpu": "100m", "memory": "10Mi"}

    assert pod_requests(body) == (2100, 1536 + 10)


def test_the_demand_of_a_vnpu_pod_carries_its_cpu_and_memory() -> None:
    body = pod("vllm", 3)
    body["spec"]["containers"][0]["resources"]["requests"].update({"cpu": "4", "memory": "16Gi"})

    demand = pod_demand(body, UnitsConfig())

    assert (demand.cpu_milli, demand.host_memory_mib) == (4000, 16384)


def test_fit_refuses_a_node_whose_memory_is_short_and_says_so() -> None:
    state = state_with(watched_node("npu-a", "16", "8Gi"))
    state.observe_pod(pod_facts(cpu_pod("batch", "1", "6Gi", "npu-a")))
    demand = PodDemand(request=parse_vnpu_request(3, UnitsConfig()), cpu_milli=1000, host_memory_mib=4096)
    snapshot = state.node("npu-a")
    assert snapshot is not None

    verdict = fit_node(demand, snapshot)

    assert isinstance(verdict, Refusal)
    assert verdict.kind is RefusalKind.HOST_MEMORY
    assert "2048 MiB free" in verdict.reason


def test_a_reservation_takes_cpu_and_memory_and_refuses_what_is_not_free() -> None:
    state = state_with(watched_node("npu-a", "4", "8Gi"))

    state.reserve(PodKey("default", "p1", "u1"), "npu-a", (), cpu_milli=3000, memory_mib=1024)

    with pytest.raises(ReservationConflict, match="CPU free"):
        state.reserve(PodKey("default", "p2", "u2"), "npu-a", (), cpu_milli=2000)
    held = state.node("npu-a")
    assert held is not None and (held.cpu_milli_used, held.host_memory_mib_used) == (3000, 1024)
