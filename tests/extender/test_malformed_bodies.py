"""Every malformed request body gets a 4xx with a JSON ``Error`` naming what is wrong, never a 500.

Regression tests for the two defects of issue 13 (``spec.containers`` given as a string, a deeply nested body),
then a fuzzing pass over the three verbs kube-scheduler calls (and preempt): arbitrary JSON, and valid requests
with one field anywhere replaced by arbitrary JSON.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from extender_kit import Extender, inventory, node, pod
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VERBS = ("filter", "prioritize", "bind", "preempt")


async def post_raw(extender: Extender, verb: str, data: bytes) -> tuple[int, Any]:
    response = await extender.client.post(f"/{verb}", data=data, headers={"Content-Type": "application/json"})
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def test_containers_given_as_a_string_is_a_400_naming_the_field(extender: Extender) -> None:
    extender.add_node("npu-a", inventory(2))
    bad = pod("vllm-0", 3)
    bad["spec"]["containers"] = "vllm"

    for verb in ("filter", "prioritize", "preempt"):
        status, body = await extender.post(verb, {"Pod": bad, "NodeNames": ["npu-a"]})

        assert status == 400, (verb, body)
        assert "spec.containers" in body["Error"]


async def test_a_container_that_is_not_an_object_is_a_400_naming_it(extender: Extender) -> None:
    bad = pod("vllm-0", 3)
    bad["spec"]["containers"].append(7)

    status, body = await extender.post("filter", {"Pod": bad, "NodeNames": []})

    assert status == 400
    assert "spec.containers[1]" in body["Error"]


async def test_a_deeply_nested_body_is_a_400(extender: Extender) -> None:
    for verb in VERBS:
        status, body = await post_raw(extender, verb, b"[" * 200_000)

        assert status == 400, verb
        assert "nested too deeply" in body["Error"]


async def test_a_deeply_nested_field_inside_a_pod_is_answered_without_a_500(extender: Extender) -> None:
    deep: Any = 0
    for _ in range(500):
        deep = [deep]
    bad = pod("vllm-0", 3)
    bad["spec"]["containers"] = deep

    status, body = await extender.post("filter", {"Pod": bad, "NodeNames": []})

    assert status == 400
    assert "spec.containers" in body["Error"]
    assert len(body["Error"]) < 400  # the offending value is shortened, not echoed


# -- fuzzing ---------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def valid_body(verb: str) -> dict[str, Any]:
    vnpu = pod("vllm-0", 3, memory=1024, annotations={"flexnpu.io/card-model": "910B3"})
    vnpu["metadata"]["uid"] = "uid-0"
    if verb == "bind":
        return {"PodName": "vllm-0", "PodNamespace": "default", "PodUID": "uid-0", "Node": "npu-a"}
    if verb == "preempt":
        return {"Pod": vnpu, "NodeNameToMetaVictims": {"npu-a": {"Pods": [{"UID": "v-1"}], "NumPDBViolations": 0}}}
    return {"Pod": vnpu, "Nodes": {"items": [node("npu-a", inventory(2))]}, "NodeNames": None}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (dict keys and list positions), the root excluded."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


def replaced(body: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    out = copy.deepcopy(body)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def assert_json_answer(status: int, body: Any) -> None:
    assert status == 200 or 400 <= status < 500, (status, body)
    if status != 200:
        assert isinstance(body, dict) and isinstance(body.get("Error"), str) and body["Error"]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(verb=st.sampled_from(VERBS), value=JSON)
async def test_arbitrary_json_is_never_a_500(extender: Extender, verb: str, value: object) -> None:
    status, body = await post_raw(extender, verb, json.dumps(value).encode())

    assert_json_answer(status, body)


@FUZZ
@given(verb=st.sampled_from(VERBS), data=st.data(), value=JSON)
async def test_a_valid_request_with_any_field_replaced_is_never_a_500(
    extender: Extender, verb: str, data: st.DataObject, value: object
) -> None:
    if extender.state.node("npu-a") is None:
        extender.add_node("npu-a", inventory(2))
    body = valid_body(verb)
    path = data.draw(st.sampled_from(paths(body)))

    status, answer = await post_raw(extender, verb, json.dumps(replaced(body, path, value)).encode())

    assert_json_answer(status, answer)


@FUZZ
@given(data=st.binary(max_size=64))
async def test_garbage_bytes_are_a_400(extender: Extender, data: bytes) -> None:
    try:
        json.loads(data)
    except ValueError:
        status, body = await post_raw(extender, "filter", data)
        assert status == 400
        assert "not valid JSON" in body["Error"]
