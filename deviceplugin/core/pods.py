"""Reading pod manifests (plain JSON, as the API server sends them) into the values placement needs.

A pod counts when it is bound to this node, not finished, and some container asks for ``huawei.com/vnpu``.
Malformed flexnpu annotations on a pod make it a pod with a problem, never a crash of the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flexnpu import names
from flexnpu.annotations import BindPhase, CardAssignment, decode_assignment, parse_bind_phase, parse_bind_time
from flexnpu.deviceplugin.core.allocation import PendingPod, PodRef
from flexnpu.errors import ValidationError
from flexnpu.priority import DEFAULT_PRIORITY, parse_priority

_FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class NodePod:
    """A pod on this node that uses units, read from its manifest, or the reason it could not be read."""

    pod: PendingPod
    running: bool
    problem: str = ""


def read_node_pods(items: list[Mapping[str, Any]], node_name: str) -> list[NodePod]:
    """The unfinished pods of ``items`` bound to ``node_name`` that ask for units."""
    out = []
    for raw in items:
        spec = raw.get("spec") or {}
        phase = (raw.get("status") or {}).get("phase", "Pending")
        if spec.get("nodeName") != node_name or phase in _FINISHED:
            continue
        requests = unit_requests(spec)
        if requests:
            out.append(_node_pod(raw, requests, running=phase == "Running"))
    return out


def pending_pods(node_pods: list[NodePod]) -> list[PendingPod]:
    """Pods that may still be waiting for their Allocate: not running, handshake not finished, readable."""
    return [p.pod for p in node_pods
            if not p.running and not p.problem and p.pod.phase in (None, BindPhase.ALLOCATING)]


def units_in_use(node_pods: list[NodePod]) -> dict[str, int]:
    """Units per card uuid held by pods whose handshake finished (``allocated``)."""
    used: dict[str, int] = {}
    for node_pod in node_pods:
        if node_pod.pod.phase is BindPhase.ALLOCATED:
            for a in node_pod.pod.assignment:
                used[a.uuid] = used.get(a.uuid, 0) + a.units
    return used


def unit_requests(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """``huawei.com/vnpu`` of every container asking for it (limits, else requests)."""
    out = []
    for container in spec.get("containers") or []:
        value = _resource(container, names.RESOURCE_VNPU)
        if value is not None and value.isdigit() and int(value) > 0:
            out.append(int(value))
    return tuple(out)


def _resource(container: Mapping[str, Any], name: str) -> str | None:
    resources = container.get("resources") or {}
    for key in ("limits", "requests"):
        value = (resources.get(key) or {}).get(name)
        if value is not None:
            return str(value)
    return None


def _memory(spec: Mapping[str, Any]) -> int | None:
    for container in spec.get("containers") or []:
        value = _resource(container, names.RESOURCE_VNPU_MEMORY)
        if value is not None and value.isdigit():
            return int(value)
    return None


def _node_pod(raw: Mapping[str, Any], requests: tuple[int, ...], running: bool) -> NodePod:
    meta = raw.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    ref = PodRef(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""))
    base = PendingPod(ref=ref, unit_requests=requests, memory_mib=_memory(raw.get("spec") or {}),
                      created=_created(meta.get("creationTimestamp")))
    try:
        return NodePod(pod=_with_handshake(base, annotations), running=running)
    except ValidationError as exc:
        return NodePod(pod=base, running=running, problem=str(exc))


def _with_handshake(base: PendingPod, annotations: Mapping[str, str]) -> PendingPod:
    phase_text = annotations.get(names.ANNOTATION_BIND_PHASE)
    phase = parse_bind_phase(phase_text) if phase_text else None
    time_text = annotations.get(names.ANNOTATION_BIND_TIME)
    assigned_text = annotations.get(names.ANNOTATION_ASSIGNED)
    assignment: tuple[CardAssignment, ...] = decode_assignment(assigned_text) if assigned_text else ()
    priority = parse_priority(annotations.get(names.ANNOTATION_PRIORITY), names.ANNOTATION_PRIORITY) \
        if annotations.get(names.ANNOTATION_PRIORITY) else DEFAULT_PRIORITY
    return PendingPod(ref=base.ref, unit_requests=base.unit_requests, memory_mib=base.memory_mib,
                      priority=priority, phase=phase, bind_time=parse_bind_time(time_text) if time_text else None,
                      created=base.created, assignment=assignment)


def _created(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime(1970, 1, 1, tzinfo=UTC)
