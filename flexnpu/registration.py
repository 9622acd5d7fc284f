"""The node daemon's registration body (the seed's ``POST /device/register``), shared by flexnpud and the operator.

Seed body: ``{"flexnpu_id": "0", "entity": "...", "npu": 7, "chip": 0, "aicore_alloc": 2, "memory_alloc": 16384}``
with memory in MiB, plus our optional ``priority`` and ``pod_uid`` (the identity the grant path checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from flexnpu._decode import as_mapping, get_int, get_str, require_utf8
from flexnpu.errors import ValidationError
from flexnpu.priority import Priority, parse_priority

MAX_AICORE_ALLOC = 16 * 1000
MAX_MEMORY_MIB = 1 << 20


class RegistrationBody(TypedDict):
    flexnpu_id: str
    entity: str
    npu: int
    chip: int
    aicore_alloc: int
    memory_alloc: int
    priority: NotRequired[str]
    pod_uid: NotRequired[str]


@dataclass(frozen=True)
class Registration:
    """One workload registered on one card of a node: its weight (aicore_alloc of quota), memory cap, priority."""

    flexnpu_id: str
    entity: str
    npu: int
    aicore_alloc: int
    memory_alloc: int
    chip: int = 0
    priority: Priority = Priority.NORMAL
    pod_uid: str = ""

    def to_body(self) -> RegistrationBody:
        body: RegistrationBody = {
            "flexnpu_id": self.flexnpu_id,
            "entity": self.entity,
            "npu": self.npu,
            "chip": self.chip,
            "aicore_alloc": self.aicore_alloc,
            "memory_alloc": self.memory_alloc,
            "priority": self.priority.value,
        }
        if self.pod_uid:
            body["pod_uid"] = self.pod_uid
        return body


def parse_registration(raw: object) -> Registration:
    """Validate a registration body; a ValidationError names the first bad field."""
    body: Mapping[str, Any] = as_mapping(raw, "body")
    flexnpu_id = body.get("flexnpu_id")
    if isinstance(flexnpu_id, int) and not isinstance(flexnpu_id, bool):
        flexnpu_id = str(flexnpu_id)  # the seed's register.sh sends ids as numbers or strings
    if not isinstance(flexnpu_id, str) or not flexnpu_id or len(flexnpu_id) > 253:
        raise ValidationError("flexnpu_id", flexnpu_id, "must be a non-empty string of at most 253 characters")
    return Registration(
        flexnpu_id=require_utf8(flexnpu_id, "flexnpu_id"),
        entity=get_str(body, "entity", default="", allow_empty=True, max_len=253),
        npu=get_int(body, "npu", lo=0, hi=63),
        chip=get_int(body, "chip", lo=0, hi=7, default=0),
        aicore_alloc=get_int(body, "aicore_alloc", lo=1, hi=MAX_AICORE_ALLOC),
        memory_alloc=get_int(body, "memory_alloc", lo=0, hi=MAX_MEMORY_MIB),
        priority=parse_priority(body.get("priority")),
        pod_uid=get_str(body, "pod_uid", default="", allow_empty=True, max_len=64),
    )


def same_registration(a: Registration, b: Registration) -> bool:
    """True when re-registering ``b`` over ``a`` is a no-op (idempotent register)."""
    return a == b


__all__ = [
    "MAX_AICORE_ALLOC",
    "Registration",
    "RegistrationBody",
    "ValidationError",
    "parse_registration",
    "same_registration",
]
