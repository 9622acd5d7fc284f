"""The admission webhook's pure decisions: scheduler name patch, priority rule, vnpu amounts, the review envelope."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flexnpu.extender.core.admission import (
    AdmissionPolicy,
    AdmissionRequest,
    ReviewError,
    mutate,
    read_review,
    review_response,
    validate,
)
from flexnpu.names import ANNOTATION_PRIORITY, RESOURCE_VNPU, RESOURCE_VNPU_MEMORY

POLICY = AdmissionPolicy(scheduler_name="flexnpu-scheduler")
PATCH = ({"op": "add", "path": "/spec/schedulerName", "value": "flexnpu-scheduler"},)


def container(limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None) -> dict[str, Any]:
    resources = {k: v for k, v in (("limits", limits), ("requests", requests)) if v is not None}
    return {"name": "c", "image": "i", "resources": resources}


def pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": list(containers), **spec}
    if init:
        body["initContainers"] = list(init)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {}}, "spec": body}


def annotated(value: str, **spec: Any) -> dict[str, Any]:
    obj = pod(container({RESOURCE_VNPU: 3}), **spec)
    obj["metadata"]["annotations"][ANNOTATION_PRIORITY] = value
    return obj


def create(obj: dict[str, Any], namespace: str = "team") -> AdmissionRequest:
    return AdmissionRequest(uid="u1", kind="Pod", operation="CREATE", namespace=namespace, obj=obj)


VNPU = container({RESOURCE_VNPU: 3})


@pytest.mark.parametrize(
    ("obj", "patched"),
    [
        (pod(VNPU), True),
        (pod(VNPU, schedulerName=""), True),
        (pod(VNPU, schedulerName="default-scheduler"), True),
        (pod(container(requests={RESOURCE_VNPU: "2"})), True),
        (pod(container({"cpu": "1"}), init=(container({RESOURCE_VNPU: 1}),)), True),
        (pod(VNPU, schedulerName="flexnpu-scheduler"), False),
        (pod(container({"cpu": "1"})), False),
        (pod(container({RESOURCE_VNPU_MEMORY: 100})), False),  # refused by validate, not patched
        (pod(), False),
    ],
)
def test_mutate_sets_the_scheduler_of_vnpu_pods(obj: dict[str, Any], patched: bool) -> None:
    verdict = mutate(create(obj), POLICY)
    assert verdict.allowed
    assert verdict.patch == (PATCH if patched else ())


def test_mutate_leaves_another_scheduler_alone_and_says_so() -> None:
    verdict = mutate(create(pod(VNPU, schedulerName="volcano")), POLICY)
    assert verdict.allowed and not verdict.patch
    assert "'volcano' left alone" in verdict.warnings[0]


def test_mutate_warns_that_a_pod_with_a_node_name_skips_scheduling() -> None:
    verdict = mutate(create(pod(VNPU, nodeName="node-a")), POLICY)
    assert verdict.patch == PATCH
    assert any("spec.nodeName" in w for w in verdict.warnings)


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_mutate_only_on_create(operation: str) -> None:
    request = AdmissionRequest(uid="u", kind="Pod", operation=operation, namespace="n", obj=pod(VNPU))
    assert mutate(request, POLICY).patch == ()


def test_other_kinds_are_allowed_untouched() -> None:
    request = AdmissionRequest(uid="u", kind="Deployment", operation="CREATE", namespace="n", obj={"spec": 1})
    for decide in (mutate, validate):
        verdict = decide(request, POLICY)
        assert verdict.allowed and not verdict.patch and "not a Pod" in verdict.warnings[0]


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"spec": "nope"}, "spec="),
        (pod(container({RESOURCE_VNPU: 3})) | {"spec": {"containers": "x"}}, "spec.containers="),
        ({"spec": {"containers": [7]}}, "spec.containers[0]=7"),
        ({"spec": {"containers": [{"resources": {"limits": []}}]}}, "spec.containers[0].resources.limits="),
    ],
)
def test_malformed_pods_are_refused_naming_the_field(obj: dict[str, Any], field: str) -> None:
    for decide in (mutate, validate):
        verdict = decide(create(obj), POLICY)
        assert not verdict.allowed and verdict.code == 400 and field in verdict.message


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        (pod(container({RESOURCE_VNPU: "1.5"})), "spec.containers[0].resources.limits[huawei.com/vnpu]='1.5'"),
        (pod(container({RESOURCE_VNPU: "500m"})), "must be a whole number"),
        (pod(container({RESOURCE_VNPU: 0})), "must be at least 1"),
        (pod(container({RESOURCE_VNPU: "-1"})), "huawei.com/vnpu]='-1'"),
        (pod(container({RESOURCE_VNPU: "lots"})), "'lots'"),
        (pod(container({RESOURCE_VNPU: 13})), "huawei.com/vnpu=13: must be 1..10"),
        (pod(container({RESOURCE_VNPU: 7}), container({RESOURCE_VNPU: 5})), "huawei.com/vnpu=12"),
        (pod(container({RESOURCE_VNPU_MEMORY: 100})), "huawei.com/vnpu=None: must be requested"),
        (pod(container({RESOURCE_VNPU: 2, RESOURCE_VNPU_MEMORY: "1.5"})), "vnpu-memory]='1.5'"),
    ],
)
def test_malformed_vnpu_amounts_are_refused(obj: dict[str, Any], needle: str) -> None:
    verdict = validate(create(obj), POLICY)
    assert not verdict.allowed and verdict.code == 400
    assert needle in verdict.message


@pytest.mark.parametrize(
    "obj",
    [
        pod(container({RESOURCE_VNPU: 3, RESOURCE_VNPU_MEMORY: "16384"})),
        pod(container({RESOURCE_VNPU: "2k"})),  # 200 cards, written the way the API server canonicalises it
        pod(container({RESOURCE_VNPU: 20})),
        pod(container({RESOURCE_VNPU: 3}), container({RESOURCE_VNPU: 2})),
        pod(container({RESOURCE_VNPU: 3}), init=(container({RESOURCE_VNPU: 10}),)),
        pod(container({"cpu": "1"})),
    ],
)
def test_valid_amounts_are_allowed(obj: dict[str, Any]) -> None:
    assert validate(create(obj), POLICY).allowed


@pytest.mark.parametrize("value", ["high", "HIGH", " high "])
@pytest.mark.parametrize(
    ("policy", "namespace", "spec", "allowed"),
    [
        (POLICY, "team", {}, False),
        (POLICY, "team", {"priorityClassName": "low-class", "priority": 10}, False),
        (POLICY, "team", {"priorityClassName": "flexnpu-high", "priority": 1_000_000}, True),
        (POLICY, "team", {"priority": True}, False),
        (POLICY, "team", {"priority": "1000000"}, False),
        (AdmissionPolicy(high_namespaces=frozenset({"team"})), "team", {}, True),
        (AdmissionPolicy(high_namespaces=frozenset({"other"})), "team", {}, False),
        (AdmissionPolicy(high_priority_classes=frozenset({"gold"})), "team", {"priorityClassName": "gold"}, True),
        (AdmissionPolicy(high_min_priority=0), "team", {"priority": 0}, True),
    ],
)
def test_high_priority_rule(
    value: str, policy: AdmissionPolicy, namespace: str, spec: dict[str, Any], allowed: bool
) -> None:
    verdict = validate(create(annotated(value, **spec), namespace), policy)
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.code == 403
        assert f"metadata.annotations[{ANNOTATION_PRIORITY}]={value!r}: not allowed" in verdict.message


def test_the_refusal_lists_what_would_allow_high() -> None:
    policy = AdmissionPolicy(high_namespaces=frozenset({"b", "a"}), high_priority_classes=frozenset({"gold"}))
    message = validate(create(annotated("high")), policy).message
    assert "value >= 1000000" in message and "(gold)" in message and "(a, b)" in message


@pytest.mark.parametrize("value", ["normal", "low", "Low", ""])
def test_normal_and_low_need_no_permission(value: str) -> None:
    assert validate(create(annotated(value)), POLICY).allowed


@pytest.mark.parametrize("value", ["urgent", "hi", "1", "high,low"])
def test_unknown_priorities_are_refused_naming_field_and_value(value: str) -> None:
    verdict = validate(create(annotated(value)), POLICY)
    assert not verdict.allowed
    assert f"metadata.annotations[{ANNOTATION_PRIORITY}]={value!r}: must be one of high, normal, low" in verdict.message


def update(old: dict[str, Any], new: dict[str, Any]) -> AdmissionRequest:
    return AdmissionRequest(uid="u", kind="Pod", operation="UPDATE", namespace="team", obj=new, old=old)


def test_update_judges_the_priority_only_when_it_changed() -> None:
    unchecked = annotated("urgent")  # admitted before the webhook existed
    assert validate(update(unchecked, annotated("urgent")), POLICY).allowed  # e.g. the extender's bind patch
    assert not validate(update(annotated("low"), annotated("high")), POLICY).allowed
    assert not validate(update(annotated("low"), annotated("urgent")), POLICY).allowed
    assert validate(update(annotated("high"), annotated("low")), POLICY).allowed


def test_update_does_not_judge_amounts() -> None:
    odd = pod(container({RESOURCE_VNPU: 13}))  # an old pod the API server holds: nothing to do about it now
    assert validate(update(odd, odd), POLICY).allowed


def review(**request: Any) -> dict[str, Any]:
    base = {"uid": "abc", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base | request}


def test_read_review() -> None:
    request = read_review(review(namespace="ns", object=pod(VNPU), oldObject=None))
    assert (request.uid, request.kind, request.operation, request.namespace) == ("abc", "Pod", "CREATE", "ns")
    assert request.old is None and request.obj["spec"]["containers"][0]["name"] == "c"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body="),
        ({"kind": "AdmissionReview", "request": {}}, "apiVersion=None"),
        (review() | {"apiVersion": "admission.k8s.io/v1beta1"}, "apiVersion='admission.k8s.io/v1beta1'"),
        (review() | {"kind": "Pod"}, "kind='Pod'"),
        (review() | {"request": None}, "request.uid=None"),
        (review() | {"request": "x"}, "request='x'"),
        (review(uid=""), "request.uid=''"),
        (review(uid=7), "request.uid=7"),
        (review(kind="Pod"), "request.kind='Pod'"),
        (review(object=[1]), "request.object="),
        (review(object={}, oldObject=3), "request.oldObject=3"),
    ],
)
def test_malformed_reviews_name_the_field(body: object, field: str) -> None:
    with pytest.raises(ReviewError) as exc:
        read_review(body)
    assert field in str(exc.value)


def test_response_carries_a_base64_json_patch_and_warnings() -> None:
    verdict = mutate(create(pod(VNPU)), POLICY)
    answer = review_response("abc", verdict)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response: Any = answer["response"]
    assert response["uid"] == "abc" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == list(PATCH)
    assert response["warnings"] and "status" not in response


def test_refusal_response_carries_code_and_message() -> None:
    response: Any = review_response("abc", validate(create(annotated("urgent")), POLICY))["response"]
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert "urgent" in response["status"]["message"] and "patch" not in response


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(["spec", "metadata", "containers", "initContainers", "resources", "limits", "requests"])


@given(
    spec=st.dictionaries(
        FIELDS | st.sampled_from(["schedulerName", "priority", "priorityClassName", "nodeName"]), JSON
    ),
    meta=st.dictionaries(st.just("annotations") | st.text(max_size=4), JSON, max_size=2),
    operation=st.sampled_from(["CREATE", "UPDATE"]),
    priority=st.sampled_from([None, "high", "low"]),
)
def test_hostile_pods_get_a_verdict_never_an_exception(spec: Any, meta: Any, operation: str, priority: Any) -> None:
    if priority is not None:
        meta = meta | {"annotations": {ANNOTATION_PRIORITY: priority}}
    request = AdmissionRequest(
        uid="u", kind="Pod", operation=operation, namespace="n", obj={"spec": spec, "metadata": meta}, old={}
    )
    lists = AdmissionPolicy(high_namespaces=frozenset({"m"}), high_priority_classes=frozenset({"gold"}))
    for decide, policy in ((mutate, POLICY), (validate, POLICY), (validate, lists)):
        verdict = decide(request, policy)
        assert verdict.allowed or verdict.message
        json.dumps(review_response("u", verdict))


@given(body=JSON)
def test_hostile_bodies_are_read_or_refused(body: Any) -> None:
    try:
        read_review(body)
    except ReviewError as exc:
        assert exc.field
