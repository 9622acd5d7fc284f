"""The Kubernetes objects the extender writes at bind, built as plain JSON: annotations, Binding, VNpuClaim, Event.

Pure builders, so that the bind flow reads as a list of effects and tests can compare bodies. The
:class:`ClusterWriter` protocol is what the bind flow needs from the API; :mod:`flexnpu.extender.kube` implements
it over HTTP, the speed benchmark with an in-memory stand-in.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from flexnpu.annotations import BindPhase, CardAssignment, encode_assignment, format_bind_time
from flexnpu.claims import ClaimSpec, PodRef
from flexnpu.extender.pods import PodKey
from flexnpu.names import (
    ANNOTATION_ASSIGNED,
    ANNOTATION_BIND_PHASE,
    ANNOTATION_BIND_REASON,
    ANNOTATION_BIND_TIME,
    CLAIM_FINALIZER,
    CRD_GROUP,
    CRD_KIND,
    CRD_VERSION,
    LABEL_CLAIM_POD_UID,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
)
from flexnpu.priority import Priority

COMPONENT: Final = "flexnpu-extender"
MAX_NAME: Final = 253


class ClusterWriter(Protocol):
    """The API calls of a bind. Implementations raise :class:`flexnpu.errors.FlexnpuError` subclasses."""

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...

    async def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None: ...

    async def bind_pod(self, key: PodKey, node: str, annotations: Mapping[str, str] | None = None) -> None:
        """Bind the pod to ``node``; the API server merges ``annotations`` into the pod's with the nodeName."""
        ...

    async def create_claim(self, namespace: str, body: Mapping[str, Any]) -> None: ...

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None: ...


def assigned_annotations(assignments: Sequence[CardAssignment], when: datetime) -> dict[str, str | None]:
    return {
        ANNOTATION_ASSIGNED: encode_assignment(assignments),
        ANNOTATION_BIND_PHASE: BindPhase.ALLOCATING.value,
        ANNOTATION_BIND_TIME: format_bind_time(when),
        ANNOTATION_BIND_REASON: None,
    }


def failed_annotations(reason: str) -> dict[str, str | None]:
    """A bind that wrote its assignment but could not finish: take the assignment back, say why."""
    return {
        ANNOTATION_ASSIGNED: None,
        ANNOTATION_BIND_PHASE: BindPhase.FAILED.value,
        ANNOTATION_BIND_REASON: reason[:1000],
    }


def binding(key: PodKey, node: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The pods/binding body. Its annotations are merged into the pod's by the API server in the same write that
    sets nodeName (kube-apiserver's BindingREST): a bound pod is never seen without its assignment."""
    meta: dict[str, Any] = {"name": key.name, "namespace": key.namespace}
    if key.uid:
        meta["uid"] = key.uid
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": meta,
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


def claim_name(key: PodKey, assignment: CardAssignment, cards: int) -> str:
    """``<pod>-<uid8>`` for a one-card pod, ``<pod>-<uid8>-npu<index>`` per card of a whole-card pod.

    The pod's uid is in the name because a pod re-created under the same name (a StatefulSet's, say) gets its own
    claim while the old pod's claim may still be held by its deregister finalizer.
    """
    uid = "".join(c for c in key.uid.lower() if c in "0123456789abcdef")[:8]
    suffix = (f"-{uid}" if uid else "") + ("" if cards == 1 else f"-npu{assignment.index}")
    return key.name[: MAX_NAME - len(suffix)] + suffix


def claims(key: PodKey, node: str, assignments: Sequence[CardAssignment], priority: Priority) -> list[dict[str, Any]]:
    """One VNpuClaim per assigned card, owned by the pod (garbage-collected with it), created with the operator's
    deregister finalizer already on it: the operator then registers it on the first event it sees, instead of
    adding the finalizer first and registering on the next (a round trip the pod's Allocate would wait for)."""
    return [claim(key, node, a, priority, claim_name(key, a, len(assignments))) for a in assignments]


def claim(key: PodKey, node: str, assignment: CardAssignment, priority: Priority, name: str) -> dict[str, Any]:
    spec = ClaimSpec(
        node_name=node,
        npu=assignment.index,
        aicore_alloc=assignment.units,
        memory_mib=assignment.memory_mib,
        priority=priority,
        entity=key.entity,
        pod_ref=PodRef(name=key.name, uid=key.uid) if key.uid else None,
    )
    owner = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": key.name,
        "uid": key.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    meta: dict[str, Any] = {
        "name": name,
        "namespace": key.namespace,
        "labels": {LABEL_MANAGED_BY: "flexnpu", LABEL_COMPONENT: "extender", LABEL_CLAIM_POD_UID: key.uid},
        "finalizers": [CLAIM_FINALIZER],
    }
    if key.uid:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}",
        "kind": CRD_KIND,
        "metadata": meta,
        "spec": dict(spec.to_payload()),
    }


def event(
    key: PodKey, reason: str, message: str, *, warning: bool = True, instance: str = "", when: datetime | None = None
) -> dict[str, Any]:
    """A core/v1 Event on the pod. Named explicitly (``<pod>.<random>``) as client-go's recorder does."""
    now = format_bind_time(when or datetime.now(UTC))
    name = f"{key.name[: MAX_NAME - 17]}.{secrets.token_hex(8)}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": key.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": key.name,
            "namespace": key.namespace,
            "uid": key.uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
