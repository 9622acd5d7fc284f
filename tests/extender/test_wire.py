"""The extender/v1 JSON as kube-scheduler sends and reads it: keys, both nodeCacheCapable forms, errors as JSON."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from extender_kit import Extender, inventory, pod

from flexnpu.annotations import decode_assignment
from flexnpu.names import ANNOTATION_ASSIGNED, ANNOTATION_BIND_PHASE, CLAIM_FINALIZER

FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}


def node_list(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "4711"}, "items": list(nodes)}


async def test_filter_with_node_list_answers_with_the_fitting_node_objects(extender: Extender) -> None:
    roomy = extender.add_node("npu-a", inventory(8))
    full = extender.add_node("npu-b", inventory(1, prefix="b"))
    await bind_one(extender, "npu-b", units=10)
    args = {"Pod": pod("vllm-0", 4), "Nodes": node_list(roomy, full), "NodeNames": None}

    status, result = await extender.post("filter", args)

    assert status == 200
    assert set(result) == FILTER_KEYS
    assert result["Error"] == ""
    assert result["NodeNames"] is None
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["npu-a"]
    assert result["Nodes"]["items"][0] == roomy  # the node object comes back unchanged
    assert "npu-b" in result["FailedNodes"] and "card 0" in result["FailedNodes"]["npu-b"]


async def test_filter_with_node_names_answers_with_names(extender: Extender) -> None:
    extender.add_node("npu-a", inventory(2))
    extender.add_node("npu-b", inventory(2, model="910B4", prefix="b"))
    args = {"Pod": pod("vllm-0", 4, annotations={"flexnpu.io/card-model": "910B4"}), "NodeNames": ["npu-a", "npu-b"]}

    status, result = await extender.post("filter", args)

    assert status == 200
    assert result["Nodes"] is None
    assert result["NodeNames"] == ["npu-b"]
    assert "910B4" in result["FailedAndUnresolvableNodes"]["npu-a"]


async def test_prioritize_scores_every_candidate_in_0_to_10(extender: Extender) -> None:
    for name in ("npu-a", "npu-b", "npu-c"):
        extender.add_node(name, inventory(2, prefix=name))
    await bind_one(extender, "npu-b", units=5)
    args = {"Pod": pod("vllm-1", 3), "Nodes": None, "NodeNames": ["npu-a", "npu-b", "npu-c", "cpu-only"]}

    status, result = await extender.post("prioritize", args)

    assert status == 200
    assert {h["Host"] for h in result} <= {"npu-a", "npu-b", "npu-c"}  # zero scores are left out
    assert all(set(h) == {"Host", "Score"} and 0 <= h["Score"] <= 10 for h in result)
    scores = {h["Host"]: h["Score"] for h in result}
    assert scores["npu-b"] == 10  # the default policy fills the partly used card first
    assert "cpu-only" not in scores


async def test_filter_passes_only_the_nodes_the_policy_ranks_cheapest(extender: Extender) -> None:
    for name in ("npu-a", "npu-b", "npu-c"):
        extender.add_node(name, inventory(2, prefix=name))
    await bind_one(extender, "npu-c", units=5)
    await bind_one(extender, "npu-a", units=5)
    args = {"Pod": pod("vllm-1", 3), "NodeNames": ["npu-c", "npu-b", "npu-a"]}

    _, filtered = await extender.post("filter", args)
    _, scores = await extender.post("prioritize", {**args, "NodeNames": filtered["NodeNames"]})

    # npu-a and npu-c have a half-used card (the default policy fills it first); npu-b is left out of the
    # answer without a failure: it fits, it is not among the best.
    assert filtered["NodeNames"] == ["npu-a", "npu-c"]
    assert filtered["FailedNodes"] == {} and filtered["FailedAndUnresolvableNodes"] == {}
    assert sorted((h["Host"], h["Score"]) for h in scores) == [("npu-a", 10), ("npu-c", 10)]


async def test_filter_passes_every_fitting_node_when_they_tie_and_every_one_when_told_to(
    extender: Extender,
) -> None:
    for name in ("npu-a", "npu-b", "npu-c"):
        extender.add_node(name, inventory(2, prefix=name))
    tied = {"Pod": pod("vllm-1", 3), "NodeNames": ["npu-c", "npu-b", "npu-a"]}
    _, all_tied = await extender.post("filter", tied)
    await bind_one(extender, "npu-b", units=5)
    extender.service.best_nodes_only = False
    _, every = await extender.post("filter", {**tied, "Pod": pod("vllm-2", 3)})

    assert sorted(all_tied["NodeNames"]) == ["npu-a", "npu-b", "npu-c"]
    assert sorted(every["NodeNames"]) == ["npu-a", "npu-b", "npu-c"]  # npu-b is cheapest, the others pass too


async def test_pods_without_vnpu_pass_through_untouched(extender: Extender) -> None:
    extender.add_node("npu-a", inventory(1))
    plain = pod("nginx", None)
    args = {"Pod": plain, "NodeNames": ["npu-a", "cpu-1", "cpu-2"]}

    _, filtered = await extender.post("filter", args)
    _, scores = await extender.post("prioritize", args)

    assert filtered["NodeNames"] == ["npu-a", "cpu-1", "cpu-2"]
    assert filtered["FailedNodes"] == {} and filtered["FailedAndUnresolvableNodes"] == {}
    # It asks for CPU: nodes without cards strand nothing and score 10; the NPU node, alone in its group, too.
    assert {h["Host"]: h["Score"] for h in scores} == {"cpu-1": 10, "cpu-2": 10, "npu-a": 10}


async def test_a_cpu_only_pod_prefers_nodes_without_cards(extender: Extender) -> None:
    extender.add_node("npu-a", inventory(1, prefix="a"))
    extender.add_node("npu-b", inventory(1, prefix="b"))
    await bind_one(extender, "npu-b", units=4)
    plain = pod("nginx", None)

    _, scores = await extender.post("prioritize", {"Pod": plain, "NodeNames": ["npu-a", "npu-b", "cpu-1"]})

    by_host = {h["Host"]: h["Score"] for h in scores}
    assert by_host["cpu-1"] == 10
    # It takes no card and the nodes' CPU is not tracked here: the NPU nodes are priced alike, kube-scheduler's
    # own plugins choose between them.
    assert by_host["npu-a"] == by_host["npu-b"]


async def test_a_pod_that_requests_nothing_passes_through_without_scores(extender: Extender) -> None:
    extender.add_node("npu-a", inventory(1))
    plain = pod("nginx", None)
    plain["spec"]["containers"][0]["resources"] = {}

    _, scores = await extender.post("prioritize", {"Pod": plain, "NodeNames": ["npu-a", "cpu-1"]})

    assert scores == []


async def test_bind_writes_annotations_binding_and_claim(extender: Extender, kube: Any) -> None:
    extender.add_node("npu-a", inventory(2))
    body = extender.create_pod(pod("vllm-2", 3, priority="high"))
    await extender.post("filter", {"Pod": body, "NodeNames": ["npu-a"]})

    status, result = await extender.post(
        "bind", {"PodName": "vllm-2", "PodNamespace": "default", "PodUID": body["metadata"]["uid"], "Node": "npu-a"}
    )

    assert (status, result) == (200, {"Error": ""})
    stored = kube.objects["v1/pods", "default", "vllm-2"]
    notes = stored["metadata"]["annotations"]
    assert notes[ANNOTATION_BIND_PHASE] == "allocating"
    [assignment] = decode_assignment(notes[ANNOTATION_ASSIGNED])
    assert (assignment.units, assignment.memory_mib) == (3, 3 * 65536 // 10)
    assert stored["spec"]["nodeName"] == "npu-a"
    # Named after the pod and its uid: a pod re-created under the same name gets a claim of its own.
    uid8 = body["metadata"]["uid"].replace("-", "")[:8]
    claim = kube.objects["flexnpu.io/v1alpha1/vnpuclaims", "default", f"vllm-2-{uid8}"]
    assert claim["spec"] == {
        "nodeName": "npu-a",
        "npu": assignment.index,
        "chip": 0,
        "aicoreAlloc": 3,
        "memoryMiB": assignment.memory_mib,
        "priority": "high",
        "entity": "default/vllm-2",
        "podRef": {"name": "vllm-2", "uid": body["metadata"]["uid"]},
    }
    assert claim["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    assert claim["metadata"]["finalizers"] == [CLAIM_FINALIZER]  # the operator registers on its first event


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "ExtenderArgs"),
        (b'{"Pod": {}, "Nodes": null, "NodeNames": null}', 400, "NodeNames"),
        (b'{"Pod": "vllm", "NodeNames": []}', 400, "Pod"),
        (b'{"Pod": {}, "NodeNames": [1, 2]}', 400, "NodeNames"),
        (b'{"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}', 400, "metadata.name"),
        (b"\xff\xfe", 400, "not valid JSON"),
    ],
)
async def test_malformed_filter_bodies_get_a_json_error(
    extender: Extender, raw: bytes, status: int, needle: str
) -> None:
    response = await extender.client.post("/filter", data=raw, headers={"Content-Type": "application/json"})
    body = await response.json()
    assert response.status == status
    assert needle in body["Error"]


async def test_an_oversized_body_gets_a_json_413(extender: Extender) -> None:
    raw = b'{"Pod": {}, "NodeNames": ["' + b"n" * (2 * 1024 * 1024) + b'"]}'
    response = await extender.client.post("/filter", data=io.BytesIO(raw))
    assert response.status == 413
    assert "exceeds the limit" in (await response.json())["Error"]


@pytest.mark.parametrize(
    ("verb", "body", "needle"),
    [
        ("bind", {"PodName": "x", "PodNamespace": "default"}, "Node"),
        ("bind", {"PodName": "", "PodNamespace": "default", "PodUID": "u", "Node": "n"}, "PodName"),
        ("preempt", {"Pod": {}, "NodeNameToMetaVictims": {"n": {"Pods": [{"UID": 3}]}}}, "UID"),
        ("prioritize", {"Pod": None, "NodeNames": []}, "Pod"),
    ],
)
async def test_malformed_bodies_of_other_verbs(extender: Extender, verb: str, body: object, needle: str) -> None:
    status, result = await extender.post(verb, body)
    assert status == 400
    assert needle in result["Error"]


async def test_unknown_verbs_and_methods_answer_json(extender: Extender) -> None:
    response = await extender.client.post("/sort", data=b"{}")
    assert response.status == 404 and "Error" in await response.json()
    response = await extender.client.get("/filter")
    assert response.status == 405 and "Error" in await response.json()
    response = await extender.client.post("/prioritize", data=b'{"Pod": {}, "NodeNames": ["a\\"b"]}')
    assert response.status == 200 and await response.json() == []


async def test_health_readiness_and_metrics(extender: Extender) -> None:
    extender.add_node("npu-a", inventory(2))
    await extender.post("filter", {"Pod": pod("p", 1), "NodeNames": ["npu-a"]})
    assert (await extender.client.get("/healthz")).status == 200
    assert (await extender.client.get("/readyz")).status == 200
    text = await (await extender.client.get("/metrics")).text()
    assert 'flexnpu_extender_requests_total{status="200",verb="filter"} 1.0' in text
    assert "flexnpu_extender_cards 2.0" in text


async def bind_one(extender: Extender, node_name: str, units: int) -> None:
    """Occupy ``units`` on ``node_name`` through the real filter and bind verbs."""
    body = extender.create_pod(pod(f"filler-{node_name}-{units}", units))
    await extender.post("filter", {"Pod": body, "NodeNames": [node_name]})
    status, result = await extender.post(
        "bind",
        {
            "PodName": body["metadata"]["name"],
            "PodNamespace": "default",
            "PodUID": body["metadata"]["uid"],
            "Node": node_name,
        },
    )
    assert (status, result) == (200, {"Error": ""})


@pytest.mark.parametrize(
    "groups",
    [
        [],
        [(10, ["node-a", "node-b"]), (7, ["node-c"])],
        [(10, ['we"ird\\node', "node-ü"]), (3, [])],  # names json must escape take the slow path
    ],
)
def test_score_groups_encode_as_a_host_priority_list(groups: list[tuple[int, list[str]]]) -> None:
    from flexnpu.extender.wire import encode_score_groups

    decoded = json.loads(encode_score_groups(groups))
    assert sorted((h["Host"], h["Score"]) for h in decoded) == sorted((n, s) for s, names in groups for n in names)


@pytest.mark.parametrize("names", [None, [], ["node-a", "node-b"], ['"NodeNames":null', "n"]])
def test_filter_results_encode_like_json(names: list[str] | None) -> None:
    from flexnpu.extender.wire import encode_filter_result

    result = {
        "Nodes": None,
        "NodeNames": names,
        "FailedNodes": {"x": '"NodeNames":null'},
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }
    assert json.loads(encode_filter_result(result)) == result  # type: ignore[arg-type]
