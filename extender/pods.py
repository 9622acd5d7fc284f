"""What the extender reads from a v1.Pod (as JSON): its vnpu request, priority, card models and assignment.

Shared by the wire side (the pod kube-scheduler sends to ``filter``) and the watch side (pods the API server
streams), so both agree on what a pod asks for and holds. Pure translation: no I/O.

A pod's request is the Kubernetes effective request of ``huawei.com/vnpu`` (and ``huawei.com/vnpu-memory``): the
sum over its containers, or the largest init container when that is larger. Limits count where requests are absent,
as they do for extended resources.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flexnpu.annotations import CardAssignment, decode_assignment
from flexnpu.errors import ValidationError
from flexnpu.extender.core.model import PodDemand
from flexnpu.names import (
    ANNOTATION_ASSIGNED,
    ANNOTATION_CARD_MODEL,
    ANNOTATION_PRIORITY,
    RESOURCE_VNPU,
    RESOURCE_VNPU_MEMORY,
)
from flexnpu.priority import Priority, parse_priority
from flexnpu.units import UnitsConfig, parse_vnpu_request

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class Interest(enum.Enum):
    """Whether the extender has anything to decide for a pod."""

    NONE = "none"  # asks for no flexnpu resource: pass through untouched
    VNPU = "vnpu"


@dataclass(frozen=True)
class PodKey:
    namespace: str
    name: str
    uid: str

    @property
    def entity(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodFacts:
    """A pod as the cluster state keeps it: who, where, in which phase, and which card shares it holds."""

    key: PodKey
    node_name: str
    phase: str
    priority: Priority
    assignments: tuple[CardAssignment, ...]
    deleting: bool = False

    @property
    def holds_cards(self) -> bool:
        """Whether its shares count against its cards: assigned and neither finished nor going away."""
        return bool(self.assignments) and self.phase not in TERMINAL_PHASES and not self.deleting


def pod_key(pod: Mapping[str, Any]) -> PodKey:
    meta = pod.get("metadata") or {}
    return PodKey(namespace=str(meta.get("namespace") or "default"), name=str(meta.get("name") or ""),
                  uid=str(meta.get("uid") or ""))


def pod_annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def vnpu_amounts(pod: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """The pod's effective (units, memory MiB or None); None when it asks for no vnpu at all."""
    spec = pod.get("spec") or {}
    units = _effective(spec, RESOURCE_VNPU)
    memory = _effective(spec, RESOURCE_VNPU_MEMORY)
    if units is None and memory is None:
        return None
    if units is None:
        raise ValidationError(RESOURCE_VNPU, None, f"must be set when {RESOURCE_VNPU_MEMORY} is")
    return units, memory


def interest(pod: Mapping[str, Any]) -> Interest:
    spec = pod.get("spec") or {}
    for group in ("containers", "initContainers"):
        for container in spec.get(group) or []:
            resources = (container or {}).get("resources") or {}
            for kind in ("limits", "requests"):
                if RESOURCE_VNPU in (resources.get(kind) or {}):
                    return Interest.VNPU
    return Interest.NONE


def pod_demand(pod: Mapping[str, Any], units: UnitsConfig) -> PodDemand:
    """The validated demand of a vnpu pod against a cluster cut into ``units`` (ValidationError names the field)."""
    amounts = vnpu_amounts(pod)
    if amounts is None:
        raise ValidationError(RESOURCE_VNPU, None, "the pod requests no vnpu")
    request = parse_vnpu_request(amounts[0], units, amounts[1])
    notes = pod_annotations(pod)
    return PodDemand(request=request, models=card_models(notes.get(ANNOTATION_CARD_MODEL)),
                     priority=parse_priority(notes.get(ANNOTATION_PRIORITY), ANNOTATION_PRIORITY))


def card_models(value: object) -> frozenset[str]:
    """``flexnpu.io/card-model``: one model or several joined by ``|``; empty means any."""
    if value is None or value == "":
        return frozenset()
    if not isinstance(value, str):
        raise ValidationError(ANNOTATION_CARD_MODEL, value, "must be a model name or names joined by |")
    return frozenset(m.strip() for m in value.split("|") if m.strip())


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """What the state keeps of a watched pod. A malformed assignment counts as none (the pod holds nothing)."""
    meta = pod.get("metadata") or {}
    notes = pod_annotations(pod)
    try:
        assignments = decode_assignment(notes[ANNOTATION_ASSIGNED]) if ANNOTATION_ASSIGNED in notes else ()
    except ValidationError:
        assignments = ()
    try:
        priority = parse_priority(notes.get(ANNOTATION_PRIORITY), ANNOTATION_PRIORITY)
    except ValidationError:
        priority = Priority.NORMAL
    return PodFacts(key=pod_key(pod), node_name=str((pod.get("spec") or {}).get("nodeName") or ""),
                    phase=str((pod.get("status") or {}).get("phase") or "Pending"), priority=priority,
                    assignments=assignments, deleting=bool(meta.get("deletionTimestamp")))


def _effective(spec: Mapping[str, Any], resource: str) -> int | None:
    total = _sum(spec.get("containers") or [], resource)
    init = [v for v in (_amount(c, resource) for c in spec.get("initContainers") or []) if v is not None]
    if total is None and not init:
        return None
    return max([total or 0, *init])


def _sum(containers: list[Any], resource: str) -> int | None:
    amounts = [v for v in (_amount(c, resource) for c in containers) if v is not None]
    return sum(amounts) if amounts else None


def _amount(container: Any, resource: str) -> int | None:
    resources = (container or {}).get("resources") or {}
    raw = (resources.get("requests") or {}).get(resource, (resources.get("limits") or {}).get(resource))
    if raw is None:
        return None
    return _quantity(raw, resource)


def _quantity(raw: object, resource: str) -> int:
    """An integer quantity; extended resources take whole numbers, so suffixes other than none are rejected."""
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.isdigit():
        raise ValidationError(resource, raw, "must be a whole number")
    return int(text)
