"""Table tests of the operator's pure decisions (flexnpu.operator.core)."""

from __future__ import annotations

from typing import Any

import pytest

from flexnpu.claims import ClaimPhase, claim_registration, parse_claim_spec
from flexnpu.errors import ValidationError
from flexnpu.operator.core.claims import (
    ID_PREFIX,
    MAX_ID_LENGTH,
    ClaimRef,
    claim_flexnpu_id,
    derive_flexnpu_id,
)
from flexnpu.operator.core.daemons import (
    AddressKind,
    DaemonEndpoint,
    endpoint_from_pod,
    parse_flexnpu_info,
    parse_selector,
    pick_endpoint,
    url_from_template,
)
from flexnpu.operator.core.reconcile import (
    Action,
    Outcome,
    Reason,
    backoff_delay,
    build_status,
    is_transient,
    orphans,
    plan,
    refusal_reason,
    should_announce,
    status_changed,
)
from flexnpu.priority import Priority
from flexnpu.registration import Registration

BASE = Registration(flexnpu_id="vnc.ns.a.1234", entity="a", npu=0, aicore_alloc=2, memory_alloc=1024)
GROWN = Registration(flexnpu_id="vnc.ns.a.1234", entity="a", npu=0, aicore_alloc=4, memory_alloc=1024)


@pytest.mark.parametrize(
    ("desired", "actual", "action"),
    [
        (BASE, None, Action.REGISTER),
        (BASE, BASE, Action.NOTHING),
        (GROWN, BASE, Action.REPLACE),
        (BASE, GROWN, Action.REPLACE),
        (None, BASE, Action.UNREGISTER),
        (None, None, Action.NOTHING),
    ],
)
def test_plan(desired: Registration | None, actual: Registration | None, action: Action) -> None:
    assert plan(desired, actual) == action


@pytest.mark.parametrize(
    ("actual", "known", "expected"),
    [
        (["vnc.a", "vnc.b", "manual-1"], ["vnc.a"], ["vnc.b"]),
        (["vnc.a"], ["vnc.a"], []),
        (["manual-1", "0"], [], []),
        (["vnc.z", "vnc.b"], [], ["vnc.b", "vnc.z"]),
    ],
)
def test_orphans_are_only_our_unowned_ids(actual: list[str], known: list[str], expected: list[str]) -> None:
    assert orphans(actual, known, ID_PREFIX) == expected


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (
            409,
            "aicore_alloc 4 does not fit on npu 0 chip 0: 8 of 10 already registered (quota 10)",
            Reason.QUOTA_EXCEEDED,
        ),
        (409, "memory_alloc 70000 MiB does not fit on npu 0 chip 0", Reason.MEMORY_EXCEEDED),
        (409, "flexnpu_id 'x' is registered with another body", Reason.ID_CONFLICT),
        (400, "npu=42: no such card on this node", Reason.INVALID_REQUEST),
        (401, "missing or wrong bearer token", Reason.UNAUTHORIZED),
        (403, "forbidden", Reason.UNAUTHORIZED),
    ],
)
def test_refusal_reason(status: int, error: str, reason: Reason) -> None:
    assert refusal_reason(status, error) == reason


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (404, False), (409, False), (401, False)],
)
def test_is_transient(status: int, transient: bool) -> None:
    assert is_transient(status) is transient


@pytest.mark.parametrize(("attempt", "delay"), [(0, 0.1), (1, 0.2), (3, 0.8), (10, 5.0), (-1, 0.1)])
def test_backoff_doubles_up_to_the_cap(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt, base=0.1, cap=5.0) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (ClaimRef("ns", "a", "1234abcd-ffff-0000"), "vnc.ns.a.1234abcd"),
        (ClaimRef("ns", "a"), "vnc.ns.a"),
    ],
)
def test_derive_flexnpu_id(ref: ClaimRef, expected: str) -> None:
    assert derive_flexnpu_id(ref) == expected


def test_long_ids_are_cut_and_stay_unique() -> None:
    one = derive_flexnpu_id(ClaimRef("n" * 63, "x" * 253, "uid-1"))
    two = derive_flexnpu_id(ClaimRef("n" * 63, "x" * 253, "uid-2"))
    assert len(one) <= MAX_ID_LENGTH and len(two) <= MAX_ID_LENGTH
    assert one != two and one.startswith(ID_PREFIX)


def test_recorded_id_wins_over_derivation() -> None:
    assert claim_flexnpu_id(ClaimRef("ns", "a", "u"), "old-id") == "old-id"
    assert claim_flexnpu_id(ClaimRef("ns", "a", "u"), "") == "vnc.ns.a.u"


SPEC: dict[str, Any] = {
    "nodeName": "n1",
    "npu": 3,
    "aicoreAlloc": 4,
    "memoryMiB": 2048,
    "priority": "high",
    "podRef": {"name": "p", "uid": "pod-uid"},
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {},
            {
                "npu": 3,
                "chip": 0,
                "aicore_alloc": 4,
                "memory_alloc": 2048,
                "priority": Priority.HIGH,
                "pod_uid": "pod-uid",
                "entity": "vnc.x",
            },
        ),
        ({"entity": "llama", "chip": 1}, {"entity": "llama", "chip": 1}),
    ],
)
def test_desired_registration(change: dict[str, Any], expected: dict[str, Any]) -> None:
    registration = claim_registration(parse_claim_spec({**SPEC, **change}), "vnc.x")
    assert {k: getattr(registration, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"npu": 64}, "spec.npu"),
        ({"aicoreAlloc": 0}, "spec.aicoreAlloc"),
        ({"memoryMiB": -1}, "spec.memoryMiB"),
        ({"priority": "urgent"}, "spec.priority"),
        ({"nodeName": ""}, "spec.nodeName"),
        ({"chip": 8}, "spec.chip"),
    ],
)
def test_claim_validation_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_claim_spec({**SPEC, **change})
    assert caught.value.field == field


def _pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "d-1"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "flexnpud", "ports": [{"name": "flexnpud", "containerPort": 9000}]}],
        },
        "status": {"podIP": "10.1.2.3", "hostIP": "192.168.0.7", "phase": "Running", **status},
    }


@pytest.mark.parametrize(
    ("pod", "address", "url"),
    [
        (_pod(), AddressKind.POD_IP, "http://10.1.2.3:9000"),
        (_pod(), AddressKind.HOST_IP, "http://192.168.0.7:9000"),
        (_pod(podIP="fd00::1"), AddressKind.POD_IP, "http://[fd00::1]:9000"),
        (_pod(podIP=None), AddressKind.POD_IP, None),
        (_pod(phase="Failed"), AddressKind.POD_IP, None),
    ],
)
def test_endpoint_from_pod(pod: dict[str, Any], address: AddressKind, url: str | None) -> None:
    endpoint = endpoint_from_pod(pod, port_name="flexnpud", default_port=8765, address=address)
    assert (endpoint.url if endpoint else None) == url


def test_endpoint_falls_back_to_the_default_port() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["ports"] = []
    endpoint = endpoint_from_pod(pod, port_name="flexnpud", default_port=8765, address=AddressKind.POD_IP)
    assert endpoint is not None and endpoint.url == "http://10.1.2.3:8765"


def test_pick_endpoint_prefers_ready_pods() -> None:
    old = DaemonEndpoint("n1", "http://a", "d-a", ready=False)
    new = DaemonEndpoint("n1", "http://b", "d-b", ready=True)
    assert pick_endpoint([old, new]) == new
    assert pick_endpoint([]) is None


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("a=b,c=d", {"a": "b", "c": "d"}),
        ("a==b", {"a": "b"}),
        ("", {}),
        (" a = b ", {"a": "b"}),
    ],
)
def test_parse_selector(text: str, labels: dict[str, str]) -> None:
    assert parse_selector(text) == labels


@pytest.mark.parametrize("text", ["a", "a!=b", "=b"])
def test_parse_selector_rejects_non_equality_terms(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_selector(text)


def test_url_template() -> None:
    assert url_from_template("http://{node}.nodes:8765/", "n1") == "http://n1.nodes:8765"


BODY = {"flexnpu_id": "vnc.a", "entity": "a", "npu": 0, "chip": 0, "aicore_alloc": 2, "memory_alloc": 10}


@pytest.mark.parametrize(
    "reply",
    [
        {"quota": 10, "registrations": [{**BODY, "target_share": 0.2}, {"garbage": 1}]},
        [BODY],
        {"vnc.a": {k: v for k, v in BODY.items() if k != "flexnpu_id"}},
    ],
)
def test_parse_flexnpu_info_shapes(reply: object) -> None:
    assert list(parse_flexnpu_info(reply)) == ["vnc.a"]


def test_parse_flexnpu_info_rejects_nonsense() -> None:
    with pytest.raises(ValidationError):
        parse_flexnpu_info("nope")


REGISTERED = Outcome(ClaimPhase.REGISTERED, Reason.REGISTERED, "ok", "vnc.a", daemon_reachable=True)
FULL = Outcome(ClaimPhase.FAILED, Reason.QUOTA_EXCEEDED, "does not fit", "vnc.a", daemon_reachable=True)


def test_status_keeps_transition_time_while_a_condition_holds() -> None:
    first = build_status(REGISTERED, [], now="T1", generation=1)
    again = build_status(REGISTERED, first["conditions"], now="T2", generation=1)
    failed = build_status(FULL, again["conditions"], now="T3", generation=2)
    assert [c["lastTransitionTime"] for c in again["conditions"]] == ["T1", "T1"]
    assert [c["lastTransitionTime"] for c in failed["conditions"]] == ["T3", "T1"]
    assert failed["phase"] == "Failed" and failed["observedGeneration"] == 2 and failed["flexnpuId"] == "vnc.a"
    assert not status_changed(dict(first), again) and status_changed(dict(again), failed)


@pytest.mark.parametrize(
    ("old", "outcome", "announce"),
    [
        ({}, REGISTERED, True),
        ({"phase": "Registered", "conditions": [{"type": "Registered", "reason": "Registered"}]}, REGISTERED, False),
        ({"phase": "Failed", "conditions": [{"type": "Registered", "reason": "MemoryExceeded"}]}, FULL, True),
        ({"phase": "Failed", "conditions": [{"type": "Registered", "reason": "QuotaExceeded"}]}, FULL, False),
    ],
)
def test_events_only_on_change(old: dict[str, Any], outcome: Outcome, announce: bool) -> None:
    assert should_announce(old, outcome) is announce


@pytest.mark.parametrize(
    ("outcome", "warning"),
    [
        (REGISTERED, False),
        (FULL, True),
        (Outcome(ClaimPhase.PENDING, Reason.NO_DAEMON, "none"), True),
        (Outcome(ClaimPhase.RELEASING, Reason.POD_GONE, "gone"), False),
    ],
)
def test_warning_outcomes(outcome: Outcome, warning: bool) -> None:
    assert outcome.is_warning is warning
