"""The handshake's writes on a pod, as annotations (pure): what the plugin records after each Allocate.

DESIGN.md section 4: the cards a pod got (``flexnpu.io/assigned``), the containers served so far, and the phase:
``allocated`` once its last container was served, ``failed`` with a reason when an Allocate was refused. A value
of None removes the annotation (a JSON merge patch's null).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flexnpu import names
from flexnpu.annotations import BindPhase, CardAssignment, encode_allocated_containers, encode_assignment

Annotations = Mapping[str, str | None]


def allocation_annotations(assignment: Sequence[CardAssignment], served: Sequence[str], *, done: bool) -> Annotations:
    """Progress of the handshake: the pod's cards, the containers served; ``allocated`` after the last one."""
    notes: dict[str, str | None] = {
        names.ANNOTATION_ASSIGNED: encode_assignment(assignment),
        names.ANNOTATION_ALLOCATED_CONTAINERS: encode_allocated_containers(served),
    }
    if done:
        notes |= {names.ANNOTATION_BIND_PHASE: BindPhase.ALLOCATED.value, names.ANNOTATION_BIND_REASON: None}
    return notes


def failure_annotations(reason: str) -> Annotations:
    """An Allocate refused: the phase ``failed`` and why."""
    return {names.ANNOTATION_BIND_PHASE: BindPhase.FAILED.value, names.ANNOTATION_BIND_REASON: reason}


def merge(earlier: Annotations, later: Annotations) -> dict[str, str | None]:
    """Two writes on one pod as one: the later value of each key wins (what applying both in order leaves)."""
    return {**earlier, **later}
