"""Reading pod manifests (plain JSON, as the API server sends them) into the values placement needs.

A pod counts when it is bound to this node, not finished, and some container asks for ``huawei.com/vnpu``.
Malformed flexnpu annotations on a pod make it a pod with a problem, never a crash of the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from flexnpu import names
from flexnpu.annotations import (
    BindPhase,
    CardAssignment,
    decode_allocated_containers,
    decode_assignment,
    parse_bind_phase,
    parse_bind_time,
)
from flexnpu.claims import claim_registration, parse_claim_spec, registration_id
from flexnpu.deviceplugin.core.allocation import ContainerRequest, PendingPod, PodRef
from flexnpu.deviceplugin.core.containers import PodClaim
from flexnpu.errors import ValidationError
from flexnpu.priority import DEFAULT_PRIORITY, parse_priority
from flexnpu.quantity import whole_quantity
from flexnpu.registration import Registration

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
        spec, status = raw.get("spec"), raw.get("status") or {}
        if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
            continue
        phase = status.get("phase", "Pending")
        if spec.get("nodeName") != node_name or phase in _FINISHED:
            continue
        containers = container_requests(spec)
        if containers:
            out.append(_node_pod(raw, containers, running=phase == "Running"))
    return out


def pending_pods(node_pods: list[NodePod]) -> list[PendingPod]:
    """Pods that may still be waiting for their Allocate: not running, handshake not finished, readable."""
    return [p.pod for p in node_pods if not p.running and not p.problem and p.pod.phase in (None, BindPhase.ALLOCATING)]


def units_in_use(node_pods: list[NodePod]) -> dict[str, int]:
    """Units per card uuid held by pods whose handshake finished (``allocated``)."""
    used: dict[str, int] = {}
    for node_pod in node_pods:
        if node_pod.pod.phase is BindPhase.ALLOCATED:
            for a in node_pod.pod.assignment:
                used[a.uuid] = used.get(a.uuid, 0) + a.units
    return used


def unit_requests(spec: Mapping[str, Any]) -> tuple[int, ...]:
    """``huawei.com/vnpu`` of every container asking for it, in kubelet's order."""
    return tuple(c.units for c in container_requests(spec))


def container_requests(spec: Mapping[str, Any]) -> tuple[ContainerRequest, ...]:
    """The containers asking for units, as kubelet allocates them: init containers, then app containers.

    A container without a usable name gets its position (``#3``): kubelet would refuse such a pod anyway.
    """
    out = []
    for group in ("initContainers", "containers"):
        entries = spec.get(group)
        for i, container in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(container, Mapping):
                continue
            units = _whole(_resource(container, names.RESOURCE_VNPU), 10**9)
            if not units:
                continue
            name = container.get("name")
            init = group == "initContainers" and container.get("restartPolicy") != "Always"
            out.append(
                ContainerRequest(
                    name=name if isinstance(name, str) and name else f"#{group}[{i}]",
                    units=units,
                    memory_mib=_whole(_resource(container, names.RESOURCE_VNPU_MEMORY), 10**12),
                    init=init,
                )
            )
    return tuple(out)


def _whole(raw: str | None, limit: int) -> int | None:
    """A resource's whole number in any form the API server writes (``2000`` reads back as ``"2k"``), else None."""
    if raw is None:
        return None
    try:
        return whole_quantity(raw, "resources", limit)
    except ValidationError:
        return None


def _resource(container: Mapping[str, Any], name: str) -> str | None:
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return None
    for key in ("limits", "requests"):
        group = resources.get(key)
        value = group.get(name) if isinstance(group, Mapping) else None
        if value is not None:
            return str(value)
    return None


def pod_memory(containers: Sequence[ContainerRequest]) -> int | None:
    """The pod's ``huawei.com/vnpu-memory`` as the scheduler counts it: the app containers' sum, or the largest
    init container when larger; None when no container sets it."""
    running = [c.memory_mib for c in containers if not c.init and c.memory_mib is not None]
    init = [c.memory_mib for c in containers if c.init and c.memory_mib is not None]
    if not running and not init:
        return None
    return max([sum(running), *init])


def _node_pod(raw: Mapping[str, Any], containers: tuple[ContainerRequest, ...], running: bool) -> NodePod:
    meta = raw.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    ref = PodRef(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""))
    base = PendingPod(
        ref=ref,
        containers=containers,
        memory_mib=pod_memory(containers),
        created=_created(meta.get("creationTimestamp")),
    )
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
    priority = (
        parse_priority(annotations.get(names.ANNOTATION_PRIORITY), names.ANNOTATION_PRIORITY)
        if annotations.get(names.ANNOTATION_PRIORITY)
        else DEFAULT_PRIORITY
    )
    served_text = annotations.get(names.ANNOTATION_ALLOCATED_CONTAINERS)
    served = decode_allocated_containers(served_text) if served_text else frozenset()
    return replace(
        base,
        priority=priority,
        phase=phase,
        bind_time=parse_bind_time(time_text) if time_text else None,
        assignment=assignment,
        served=served,
    )


def _created(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime(1970, 1, 1, tzinfo=UTC)


def read_pod_claims(items: list[Any], pod: PodRef, node_name: str) -> list[PodClaim]:
    """The claims of ``pod`` among ``items`` (VNpuClaim JSON, labelled with the pod's uid by the extender): the card
    each is for and its registration id, the one in its status or, before the operator wrote it, the one the
    operator derives (flexnpu.claims.registration_id), with the registration the operator would make of it when
    its spec is valid and names ``node_name``. Entries that are not readable claims are skipped, and so is a claim
    in another namespace than the pod's: anyone who may write claims in their own namespace can label one with any
    pod's uid, and must not hand that pod their card, cap or priority."""
    out = []
    for raw in items:
        if not isinstance(raw, Mapping):
            continue
        meta, spec, status = (_object(raw.get(k)) for k in ("metadata", "spec", "status"))
        labels = _object(meta.get("labels"))
        if not pod.uid or labels.get(names.LABEL_CLAIM_POD_UID) != pod.uid or meta.get("namespace") != pod.namespace:
            continue
        name, uid, npu = meta.get("name"), meta.get("uid"), spec.get("npu")
        if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
            continue
        if not isinstance(npu, int) or isinstance(npu, bool) or meta.get("deletionTimestamp"):
            continue
        recorded = status.get("flexnpuId")
        flexnpu_id = recorded if isinstance(recorded, str) and recorded else registration_id(pod.namespace, name, uid)
        out.append(
            PodClaim(name=name, npu=npu, flexnpu_id=flexnpu_id, registration=_registration(spec, flexnpu_id, node_name))
        )
    return out


def _registration(spec: Mapping[str, Any], flexnpu_id: str, node_name: str) -> Registration | None:
    try:
        parsed = parse_claim_spec(spec)
    except ValidationError:
        return None
    return claim_registration(parsed, flexnpu_id) if node_name and parsed.node_name == node_name else None


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
