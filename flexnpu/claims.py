"""The VNpuClaim custom resource's spec and status, as typed values (DESIGN.md section 5)."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from flexnpu._decode import as_mapping, get_int, get_str
from flexnpu.errors import ValidationError
from flexnpu.priority import Priority, parse_priority
from flexnpu.registration import MAX_AICORE_ALLOC, MAX_MEMORY_MIB, Registration

REGISTRATION_ID_PREFIX = "vnc."
"""Every registration the operator makes for a claim starts with this (its orphans are told apart by it)."""
MAX_REGISTRATION_ID = 253
_UID_CHARS = 8


def registration_id(namespace: str, name: str, uid: str) -> str:
    """The daemon registration id of claim ``namespace/name`` with ``uid``: ``vnc.<namespace>.<name>.<uid[:8]>``.

    The operator registers a claim under this id (then keeps it in ``status.flexnpuId``); the device plugin tells
    the pod the same id (``FLEXNPU_ID``), so that its interposer finds the slot ``slot-<id>.shm``. The uid part
    keeps a claim re-created under the same name from colliding with a stale registration; a too long id keeps its
    head and ends in a digest instead.
    """
    short_uid = uid.replace("-", "")[:_UID_CHARS]
    text = f"{REGISTRATION_ID_PREFIX}{namespace}.{name}" + (f".{short_uid}" if short_uid else "")
    if len(text) <= MAX_REGISTRATION_ID:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: MAX_REGISTRATION_ID - len(digest) - 1]}.{digest}"


class ClaimPhase(enum.StrEnum):
    PENDING = "Pending"
    REGISTERED = "Registered"
    FAILED = "Failed"
    RELEASING = "Releasing"


class PodRefPayload(TypedDict):
    name: str
    uid: str


class ClaimSpecPayload(TypedDict):
    nodeName: str
    npu: int
    chip: int
    aicoreAlloc: int
    memoryMiB: int
    priority: str
    entity: str
    podRef: NotRequired[PodRefPayload]


@dataclass(frozen=True)
class PodRef:
    name: str
    uid: str


@dataclass(frozen=True)
class ClaimSpec:
    """What a VNpuClaim asks for: a share of card ``npu`` on ``node_name``."""

    node_name: str
    npu: int
    aicore_alloc: int
    memory_mib: int
    chip: int = 0
    priority: Priority = Priority.NORMAL
    entity: str = ""
    pod_ref: PodRef | None = None

    def to_payload(self) -> ClaimSpecPayload:
        payload: ClaimSpecPayload = {
            "nodeName": self.node_name,
            "npu": self.npu,
            "chip": self.chip,
            "aicoreAlloc": self.aicore_alloc,
            "memoryMiB": self.memory_mib,
            "priority": self.priority.value,
            "entity": self.entity,
        }
        if self.pod_ref is not None:
            payload["podRef"] = {"name": self.pod_ref.name, "uid": self.pod_ref.uid}
        return payload


def parse_claim_spec(raw: object) -> ClaimSpec:
    """Validate a claim's ``spec``; errors name the field as ``spec.<key>``."""
    spec: Mapping[str, Any] = as_mapping(raw, "spec")
    pod_ref = None
    if spec.get("podRef") is not None:
        ref = as_mapping(spec["podRef"], "spec.podRef")
        pod_ref = PodRef(name=get_str(ref, "name", "spec.podRef."), uid=get_str(ref, "uid", "spec.podRef."))
    return ClaimSpec(
        node_name=get_str(spec, "nodeName", "spec."),
        npu=get_int(spec, "npu", "spec.", lo=0, hi=63),
        chip=get_int(spec, "chip", "spec.", lo=0, hi=7, default=0),
        aicore_alloc=get_int(spec, "aicoreAlloc", "spec.", lo=1, hi=MAX_AICORE_ALLOC),
        memory_mib=get_int(spec, "memoryMiB", "spec.", lo=0, hi=MAX_MEMORY_MIB),
        priority=parse_priority(spec.get("priority"), "spec.priority"),
        entity=get_str(spec, "entity", "spec.", default="", allow_empty=True),
        pod_ref=pod_ref,
    )


def claim_registration(spec: ClaimSpec, flexnpu_id: str) -> Registration:
    """The node daemon's body for a claim (the operator registers it; the device plugin too, when an Allocate
    comes before the operator did); the entity defaults to the claim's id so that flexnpu-info names it."""
    return Registration(
        flexnpu_id=flexnpu_id,
        entity=spec.entity or flexnpu_id,
        npu=spec.npu,
        chip=spec.chip,
        aicore_alloc=spec.aicore_alloc,
        memory_alloc=spec.memory_mib,
        priority=spec.priority,
        pod_uid=spec.pod_ref.uid if spec.pod_ref is not None else "",
    )


class ConditionPayload(TypedDict):
    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str


class ClaimStatusPayload(TypedDict, total=False):
    phase: str
    flexnpuId: str
    message: str
    conditions: list[ConditionPayload]
    observedGeneration: int
    lastSyncTime: str


@dataclass(frozen=True)
class ClaimStatus:
    phase: ClaimPhase = ClaimPhase.PENDING
    flexnpu_id: str = ""
    message: str = ""
    observed_generation: int = 0
    last_sync_time: str = ""

    def to_payload(self) -> ClaimStatusPayload:
        payload: ClaimStatusPayload = {
            "phase": self.phase.value,
            "message": self.message,
            "observedGeneration": self.observed_generation,
        }
        if self.flexnpu_id:
            payload["flexnpuId"] = self.flexnpu_id
        if self.last_sync_time:
            payload["lastSyncTime"] = self.last_sync_time
        return payload


def parse_claim_phase(value: object) -> ClaimPhase:
    try:
        return ClaimPhase(str(value))
    except ValueError:
        raise ValidationError("status.phase", value, "must be Pending, Registered, Failed or Releasing") from None
