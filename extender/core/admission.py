"""The admission webhook's decisions: which pods get flexnpu's scheduler, and which flexnpu pods are refused.

Pure functions from an AdmissionReview (admission.k8s.io/v1, as JSON) and an :class:`AdmissionPolicy` to a
:class:`Verdict`; the HTTPS adapter (:mod:`flexnpu.extender.webhook`) only reads the body and writes the answer.

**Mutating** (:func:`mutate`, Pod CREATE): a pod whose containers or init containers request ``huawei.com/vnpu``
(in limits or requests) and whose ``spec.schedulerName`` is empty or ``default-scheduler`` (the API server's
default, already applied when webhooks run) gets a JSONPatch setting it to the policy's scheduler name, so it is
placed by the scheduler that consults the extender instead of being packed by the device plugin blind to memory.
A pod naming another scheduler is left alone, with a warning; so is a pod that already names ours. A pod created
with ``spec.nodeName`` set is patched too but warned that no scheduler will run for it.

**Validating** (:func:`validate`, Pod CREATE and UPDATE):

- ``flexnpu.io/priority`` must be ``high``, ``normal`` or ``low`` (case and surrounding blanks ignored, as every
  component parses it). On UPDATE it is judged only when its value changed, so a pod admitted before the webhook
  existed can still be patched by the extender at bind.
- ``high`` is allowed when any of these holds (one rule, checked in this order): the pod's namespace is in
  ``high_namespaces``; its ``spec.priorityClassName`` is in ``high_priority_classes``; or its ``spec.priority``
  is at least ``high_min_priority``. ``spec.priority`` is trustworthy here: the API server's Priority admission
  plugin computes it from the PriorityClass (and refuses a pod that sets it by hand) before validating webhooks
  run, and who may use which PriorityClass is what cluster admins already restrict (ResourceQuota scopes). So by
  default (both lists empty) ``high`` needs a PriorityClass of value >= ``high_min_priority`` (1000000, the value
  of the chart's ``flexnpu-high`` class); a pod without a PriorityClass has priority 0 and is refused.
- On CREATE, the vnpu amounts: every container's ``huawei.com/vnpu`` and ``huawei.com/vnpu-memory`` must be a
  whole number >= 1, the pod's effective request (sum over containers, or the largest init container) must be
  1..U or a multiple of U (DESIGN.md section 3), and ``huawei.com/vnpu-memory`` needs ``huawei.com/vnpu``.

Every refusal names the field and the value. A malformed review is a :class:`ReviewError` (the adapter answers
400, since it cannot echo a uid it does not have); a malformed pod inside a well-formed review is refused with
``allowed: false`` and code 400. Objects other than Pods are allowed untouched (a misconfigured webhook must not
block the cluster), with a warning.
"""

from __future__ import annotations

import base64
import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from flexnpu.errors import ValidationError
from flexnpu.names import ANNOTATION_PRIORITY, RESOURCE_VNPU, RESOURCE_VNPU_MEMORY
from flexnpu.priority import Priority, parse_priority
from flexnpu.quantity import whole_quantity
from flexnpu.units import UnitsConfig, parse_vnpu_request

API_VERSION: Final = "admission.k8s.io/v1"
KIND: Final = "AdmissionReview"
DEFAULT_SCHEDULER: Final = "default-scheduler"
_CONTAINER_GROUPS: Final = ("containers", "initContainers")


class ReviewError(ValidationError):
    """The body is not an AdmissionReview request this webhook can answer (no uid to echo, wrong kind...)."""


@dataclass(frozen=True)
class AdmissionPolicy:
    """What the webhook enforces; built from the extender's settings."""

    scheduler_name: str = "flexnpu-scheduler"
    units: UnitsConfig = field(default_factory=UnitsConfig)
    high_namespaces: frozenset[str] = frozenset()
    high_priority_classes: frozenset[str] = frozenset()
    high_min_priority: int = 1_000_000


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of an AdmissionReview's ``request`` the decisions read."""

    uid: str
    kind: str
    operation: str
    namespace: str
    obj: Mapping[str, Any]
    old: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Verdict:
    """Allowed or not (with ``code`` and ``message``), a JSONPatch to apply, and warnings shown to the client."""

    allowed: bool
    message: str = ""
    code: int = 200
    patch: tuple[dict[str, object], ...] = ()
    warnings: tuple[str, ...] = ()


ALLOW: Final = Verdict(allowed=True)


def read_review(body: object) -> AdmissionRequest:
    """An admission.k8s.io/v1 AdmissionReview's request; :class:`ReviewError` names what is wrong."""
    review = _object(body, "body", ReviewError)
    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if review.get(key) != expected:
            raise ReviewError(key, _short(review.get(key)), f"must be {expected}")
    request = _object(review.get("request"), "request", ReviewError)
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid", _short(uid), "must be a non-empty string")
    kind = _object(request.get("kind"), "request.kind", ReviewError).get("kind")
    old = request.get("oldObject")
    return AdmissionRequest(
        uid=uid,
        kind=str(kind or ""),
        operation=str(request.get("operation") or ""),
        namespace=str(request.get("namespace") or ""),
        obj=_object(request.get("object"), "request.object", ReviewError),
        old=None if old is None else _object(old, "request.oldObject", ReviewError),
    )


def review_response(uid: str, verdict: Verdict) -> dict[str, object]:
    """The AdmissionReview answering ``uid`` with ``verdict`` (the patch base64-encoded, as the API requires)."""
    response: dict[str, object] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": verdict.code, "message": verdict.message}
    if verdict.patch:
        patch = json.dumps(list(verdict.patch), separators=(",", ":")).encode()
        response.update(patchType="JSONPatch", patch=base64.b64encode(patch).decode("ascii"))
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def mutate(request: AdmissionRequest, policy: AdmissionPolicy) -> Verdict:
    """Pod CREATE requesting vnpu with the default (or no) scheduler -> a patch naming flexnpu's scheduler."""
    if request.kind != "Pod":
        return _not_a_pod(request)
    if request.operation != "CREATE":
        return ALLOW
    try:
        return _scheduler_verdict(request.obj, policy)
    except ValidationError as exc:
        return _malformed(exc)


def validate(request: AdmissionRequest, policy: AdmissionPolicy) -> Verdict:
    """Pod CREATE/UPDATE: the priority annotation (and on CREATE the vnpu amounts) -> allowed or refused."""
    if request.kind != "Pod":
        return _not_a_pod(request)
    if request.operation not in ("CREATE", "UPDATE"):
        return ALLOW
    try:
        if request.operation == "CREATE":
            check_vnpu_amounts(_object(request.obj.get("spec"), "spec"), policy.units)
        refusal = priority_refusal(request, policy)
    except ValidationError as exc:
        return _malformed(exc)
    return ALLOW if refusal is None else Verdict(allowed=False, code=403, message=refusal)


def requests_vnpu(spec: Mapping[str, Any]) -> bool:
    """Whether any container or init container names ``huawei.com/vnpu`` in its limits or requests."""
    for where, resources in _resources(spec):
        for kind in ("limits", "requests"):
            if RESOURCE_VNPU in _object(resources.get(kind), f"{where}.resources.{kind}"):
                return True
    return False


def check_vnpu_amounts(spec: Mapping[str, Any], units: UnitsConfig) -> None:
    """Every vnpu amount a whole number >= 1 and the effective request a valid one (ValidationError if not)."""
    amount = _effective(spec, RESOURCE_VNPU)
    memory = _effective(spec, RESOURCE_VNPU_MEMORY)
    if amount is None:
        if memory is not None:
            raise ValidationError(RESOURCE_VNPU, None, f"must be requested when {RESOURCE_VNPU_MEMORY} is")
        return
    parse_vnpu_request(amount, units, memory)


def priority_refusal(request: AdmissionRequest, policy: AdmissionPolicy) -> str | None:
    """Why the pod's ``flexnpu.io/priority`` is refused, or None when it is acceptable (or unchanged on UPDATE)."""
    raw = _annotation(request.obj)
    if request.operation == "UPDATE" and request.old is not None and raw == _annotation(request.old):
        return None
    priority = parse_priority(raw, f"metadata.annotations[{ANNOTATION_PRIORITY}]")
    if priority is not Priority.HIGH or high_allowed(request.obj, request.namespace, policy):
        return None
    spec = _object(request.obj.get("spec"), "spec")
    return (
        f"metadata.annotations[{ANNOTATION_PRIORITY}]={raw!r}: not allowed for this pod "
        f"(namespace {request.namespace!r}, priorityClassName {spec.get('priorityClassName') or ''!r}, "
        f"priority {spec.get('priority')!r}): high needs a PriorityClass of value >= {policy.high_min_priority}"
        + _listed(" or one of these classes", policy.high_priority_classes)
        + _listed(" or one of these namespaces", policy.high_namespaces)
    )


def high_allowed(pod: Mapping[str, Any], namespace: str, policy: AdmissionPolicy) -> bool:
    """The module docstring's rule: namespace allow-list, class allow-list, or spec.priority >= the threshold."""
    if namespace in policy.high_namespaces:
        return True
    spec = _object(pod.get("spec"), "spec")
    name = spec.get("priorityClassName")
    if isinstance(name, str) and name in policy.high_priority_classes:
        return True
    value = spec.get("priority")
    return isinstance(value, int) and not isinstance(value, bool) and value >= policy.high_min_priority


def _scheduler_verdict(pod: Mapping[str, Any], policy: AdmissionPolicy) -> Verdict:
    spec = _object(pod.get("spec"), "spec")
    if not requests_vnpu(spec):
        return ALLOW
    current = spec.get("schedulerName") or ""
    if current == policy.scheduler_name:
        return ALLOW
    if current not in ("", DEFAULT_SCHEDULER):
        return Verdict(
            allowed=True,
            warnings=(
                f"flexnpu: spec.schedulerName={_short(current)!r} left alone: pods requesting {RESOURCE_VNPU} "
                f"placed by a scheduler other than {policy.scheduler_name!r} bypass the extender (memory unchecked)",
            ),
        )
    warnings = [f"flexnpu: spec.schedulerName set to {policy.scheduler_name!r} (the pod requests {RESOURCE_VNPU})"]
    if spec.get("nodeName"):
        warnings.append("flexnpu: spec.nodeName is set, so no scheduler runs: the device plugin picks the card")
    patch: dict[str, object] = {"op": "add", "path": "/spec/schedulerName", "value": policy.scheduler_name}
    return Verdict(allowed=True, patch=(patch,), warnings=tuple(warnings))


def _annotation(pod: Mapping[str, Any]) -> object:
    meta = _object(pod.get("metadata"), "metadata")
    return _object(meta.get("annotations"), "metadata.annotations").get(ANNOTATION_PRIORITY)


def _resources(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(field path, resources object) of every container and init container."""
    out = []
    for group in _CONTAINER_GROUPS:
        containers = spec.get(group)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise ValidationError(f"spec.{group}", _short(containers), "must be a list of containers")
        for i, container in enumerate(containers):
            where = f"spec.{group}[{i}]"
            out.append((where, _object(_object(container, where).get("resources"), f"{where}.resources")))
    return out


def _effective(spec: Mapping[str, Any], resource: str) -> int | None:
    """Kubernetes' effective request: max(sum over containers, largest init container); None when never named."""
    total: int | None = None
    init: list[int] = []
    for where, resources in _resources(spec):
        amount = _amount(where, resources, resource)
        if amount is None:
            continue
        if where.startswith("spec.initContainers"):
            init.append(amount)
        else:
            total = (total or 0) + amount
    if total is None and not init:
        return None
    return max([total or 0, *init])


def _amount(where: str, resources: Mapping[str, Any], resource: str) -> int | None:
    for kind in ("requests", "limits"):
        raw = _object(resources.get(kind), f"{where}.resources.{kind}").get(resource)
        if raw is not None:
            value = whole_quantity(raw, f"{where}.resources.{kind}[{resource}]")
            if value < 1:
                raise ValidationError(f"{where}.resources.{kind}[{resource}]", raw, "must be at least 1")
            return value
    return None


def _not_a_pod(request: AdmissionRequest) -> Verdict:
    return Verdict(allowed=True, warnings=(f"flexnpu webhook: kind {_short(request.kind)!r} is not a Pod: not judged",))


def _malformed(exc: ValidationError) -> Verdict:
    return Verdict(allowed=False, code=400, message=f"flexnpu: {exc}")


def _listed(prefix: str, names: frozenset[str]) -> str:
    return f"{prefix} ({', '.join(sorted(names))})" if names else ""


def _object(value: object, where: str, error: type[ValidationError] = ValidationError) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise error(where, _short(value), "must be a JSON object")
    return value


def _short(value: object) -> object:
    """The value when short, else a bounded repr (a hostile body may hold anything)."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else reprlib.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
