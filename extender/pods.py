"""What the extender reads from a v1.Pod (as JSON): its vnpu request, priority, card models and assignment.

Shared by the wire side (the pod kube-scheduler sends to ``filter``) and the watch side (pods the API server
streams), so both agree on what a pod asks for and holds. Pure translation: no I/O.

A pod's request is the Kubernetes effective request of ``huawei.com/vnpu`` (and ``huawei.com/vnpu-memory``): the
sum over its containers, or the largest init container when that is larger. Limits count where requests are absent,
as they do for extended resources. CPU and memory are counted the same way (plus ``spec.overhead``), so the
cluster state can hold what every pod bound to a node asks of its CPU and memory, as kube-scheduler does.

Every pod is hostile: a field of the wrong JSON type (``spec.containers`` given as a string, a container that is
not an object) is a :class:`ValidationError` naming the field, never an ``AttributeError``.
"""

from __future__ import annotations

import enum
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flexnpu.annotations import BindPhase, CardAssignment, decode_assignment, parse_bind_time
from flexnpu.errors import ValidationError
from flexnpu.extender.core.model import PodDemand
from flexnpu.names import (
    ANNOTATION_ASSIGNED,
    ANNOTATION_BIND_PHASE,
    ANNOTATION_BIND_TIME,
    ANNOTATION_CARD_MODEL,
    ANNOTATION_PRIORITY,
    RESOURCE_VNPU,
    RESOURCE_VNPU_MEMORY,
)
from flexnpu.priority import Priority, parse_priority
from flexnpu.quantity import cpu_milli, memory_mib, whole_quantity
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
    cpu_milli: int = 0
    memory_mib: int = 0
    first_units: int = 0
    """Units of its first container asking for vnpu, in kubelet's order (see :func:`first_allocation_units`)."""
    allocating_since: datetime | None = None
    """Its bind time while the handshake says ``allocating`` and the pod has not started: kubelet may still be
    about to send its Allocate. None otherwise."""

    @property
    def live(self) -> bool:
        return self.phase not in TERMINAL_PHASES and not self.deleting

    @property
    def holds_cards(self) -> bool:
        """Whether its shares count against its cards: assigned and neither finished nor going away."""
        return bool(self.assignments) and self.live

    @property
    def holds_resources(self) -> bool:
        """Whether it counts against a node: bound, live, and holding cards, CPU or memory."""
        return bool(self.node_name) and self.live and bool(self.assignments or self.cpu_milli or self.memory_mib)


def pod_key(pod: Mapping[str, Any]) -> PodKey:
    meta = _mapping(pod.get("metadata"), "metadata")
    return PodKey(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
    )


def pod_annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return _mapping(_mapping(pod.get("metadata"), "metadata").get("annotations"), "metadata.annotations")


def vnpu_amounts(pod: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """The pod's effective (units, memory MiB or None); None when it asks for no vnpu at all."""
    spec = _mapping(pod.get("spec"), "spec")
    units = _effective(spec, RESOURCE_VNPU, _quantity)
    memory = _effective(spec, RESOURCE_VNPU_MEMORY, _quantity)
    if units is None and memory is None:
        return None
    if units is None:
        raise ValidationError(RESOURCE_VNPU, None, f"must be set when {RESOURCE_VNPU_MEMORY} is")
    return units, memory


def pod_requests(pod: Mapping[str, Any]) -> tuple[int, int]:
    """The pod's effective CPU (millicores) and memory (MiB) requests, with its overhead, as kube-scheduler counts
    them: the sum over containers or the largest init container, whichever is larger; limits where no request."""
    spec = _mapping(pod.get("spec"), "spec")
    overhead = _mapping(spec.get("overhead"), "spec.overhead")
    cpu = (_effective(spec, "cpu", cpu_milli) or 0) + _overhead(overhead, "cpu", cpu_milli)
    memory = (_effective(spec, "memory", memory_mib) or 0) + _overhead(overhead, "memory", memory_mib)
    return cpu, memory


def interest(pod: Mapping[str, Any]) -> Interest:
    spec = _mapping(pod.get("spec"), "spec")
    for group in ("containers", "initContainers"):
        for where, container in _containers(spec, group):
            resources = _mapping(container.get("resources"), f"{where}.resources")
            for kind in ("limits", "requests"):
                if RESOURCE_VNPU in _mapping(resources.get(kind), f"{where}.resources.{kind}"):
                    return Interest.VNPU
    return Interest.NONE


def pod_demand(pod: Mapping[str, Any], units: UnitsConfig) -> PodDemand:
    """The validated demand of a vnpu pod against a cluster cut into ``units`` (ValidationError names the field)."""
    amounts = vnpu_amounts(pod)
    if amounts is None:
        raise ValidationError(RESOURCE_VNPU, None, "the pod requests no vnpu")
    request = parse_vnpu_request(amounts[0], units, amounts[1])
    notes = pod_annotations(pod)
    cpu, memory = pod_requests(pod)
    return PodDemand(
        request=request,
        models=card_models(notes.get(ANNOTATION_CARD_MODEL)),
        priority=parse_priority(notes.get(ANNOTATION_PRIORITY), ANNOTATION_PRIORITY),
        cpu_milli=cpu,
        host_memory_mib=memory,
    )


def card_models(value: object) -> frozenset[str]:
    """``flexnpu.io/card-model``: one model or several joined by ``|``; empty means any."""
    if value is None or value == "":
        return frozenset()
    if not isinstance(value, str):
        raise ValidationError(ANNOTATION_CARD_MODEL, value, "must be a model name or names joined by |")
    return frozenset(m.strip() for m in value.split("|") if m.strip())


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """What the state keeps of a watched pod. A malformed assignment counts as none (the pod holds nothing), and
    malformed CPU or memory requests as zero."""
    meta = _lenient(pod.get("metadata"))
    notes = _lenient(meta.get("annotations"))
    try:
        assignments = decode_assignment(notes[ANNOTATION_ASSIGNED]) if ANNOTATION_ASSIGNED in notes else ()
    except ValidationError:
        assignments = ()
    try:
        priority = parse_priority(notes.get(ANNOTATION_PRIORITY), ANNOTATION_PRIORITY)
    except ValidationError:
        priority = Priority.NORMAL
    try:
        cpu, memory = pod_requests(pod)
    except ValidationError:
        cpu, memory = 0, 0
    key = PodKey(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
    )
    phase = str(_lenient(pod.get("status")).get("phase") or "Pending")
    try:
        first = first_allocation_units(pod) or 0
    except ValidationError:
        first = 0
    return PodFacts(
        key=key,
        node_name=str(_lenient(pod.get("spec")).get("nodeName") or ""),
        phase=phase,
        priority=priority,
        assignments=assignments,
        deleting=bool(meta.get("deletionTimestamp")),
        cpu_milli=cpu,
        memory_mib=memory,
        first_units=first,
        allocating_since=_allocating_since(notes, phase),
    )


def first_allocation_units(pod: Mapping[str, Any]) -> int | None:
    """The units kubelet's first Allocate for this pod asks for: its first container asking for ``huawei.com/vnpu``
    in the order kubelet allocates (init containers, then app containers, each in spec order); None for none.

    Kubelet's Allocate names no pod: the device plugin tells the pods it may be admitting apart by this count (a
    pod it is in the middle of comes first). Two pods bound to one node with the same first count, both still to
    be allocated, could be told apart by nothing, so the extender binds the second only once the first is
    allocated (:meth:`flexnpu.extender.service.ExtenderService.bind`).
    """
    spec = _mapping(pod.get("spec"), "spec")
    for group in ("initContainers", "containers"):
        for where, container in _containers(spec, group):
            units = _amount(where, container, RESOURCE_VNPU, _quantity)
            if units:
                return units
    return None


def _allocating_since(notes: Mapping[str, Any], phase: str) -> datetime | None:
    """The bind time of a pod whose handshake is at ``allocating`` and that has not started; None otherwise (a
    malformed bind time counts as none: such a pod holds back no other)."""
    if phase != "Pending" or notes.get(ANNOTATION_BIND_PHASE) != BindPhase.ALLOCATING.value:
        return None
    text = notes.get(ANNOTATION_BIND_TIME)
    try:
        return parse_bind_time(text) if isinstance(text, str) else None
    except ValidationError:
        return None


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    """A JSON object, absent meaning empty; anything else is refused naming ``field``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(field, _short(value), "must be a JSON object")
    return value


def _lenient(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _containers(spec: Mapping[str, Any], group: str) -> list[tuple[str, Mapping[str, Any]]]:
    """``spec.<group>`` as (field path, container object) pairs; a non-list or a non-object entry is refused."""
    value = spec.get(group)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"spec.{group}", _short(value), "must be a JSON list of containers")
    out = []
    for i, container in enumerate(value):
        where = f"spec.{group}[{i}]"
        out.append((where, _mapping(container, where)))
    return out


def _effective(spec: Mapping[str, Any], resource: str, parse: Callable[[object, str], int]) -> int | None:
    total = _sum(_containers(spec, "containers"), resource, parse)
    init = [
        v for v in (_amount(w, c, resource, parse) for w, c in _containers(spec, "initContainers")) if v is not None
    ]
    if total is None and not init:
        return None
    return max([total or 0, *init])


def _sum(
    containers: list[tuple[str, Mapping[str, Any]]], resource: str, parse: Callable[[object, str], int]
) -> int | None:
    amounts = [v for v in (_amount(w, c, resource, parse) for w, c in containers) if v is not None]
    return sum(amounts) if amounts else None


def _amount(where: str, container: Mapping[str, Any], resource: str, parse: Callable[[object, str], int]) -> int | None:
    resources = _mapping(container.get("resources"), f"{where}.resources")
    requests = _mapping(resources.get("requests"), f"{where}.resources.requests")
    limits = _mapping(resources.get("limits"), f"{where}.resources.limits")
    raw = requests.get(resource, limits.get(resource))
    if raw is None:
        return None
    return parse(raw, resource)


def _overhead(overhead: Mapping[str, Any], resource: str, parse: Callable[[object, str], int]) -> int:
    raw = overhead.get(resource)
    return 0 if raw is None else parse(raw, f"spec.overhead.{resource}")


def _quantity(raw: object, resource: str) -> int:
    """An extended resource's whole number, in any form the API server writes it (``2000`` reads back ``"2k"``)."""
    return whole_quantity(raw, resource)


def _short(value: object) -> object:
    """The value itself when short, else a bounded repr (bounded in depth too: the value may nest deeply)."""
    text = reprlib.repr(value)
    if len(text) > 80:
        return text[:77] + "..."
    return value if isinstance(value, (str, int, float, bool)) or value is None else text
