"""Placement on the node, as pure functions: which pod and container an Allocate is for, and which card(s) it gets.

Kubelet's Allocate does not say which pod it serves (DESIGN.md section 4). Kubelet admits the pods of a node one
at a time, in creation-timestamp order (``HandlePodAdditions`` sorts each batch with ``PodsByCreationTime``), and
within a pod allocates its init containers, then its app containers, in spec order, one Allocate each. So an
Allocate of n IDs is for the first pod, in that order, whose next container not yet served asks for n; a pod
already partly served comes first (kubelet finishes one pod before the next). Creation timestamps have 1 s
resolution and kubelet's sort of ties is not stable, so that order alone cannot tell two pods of one size apart:
the extender binds a pod to a node only when no other pod there with the same first Allocate size still waits
for its Allocate (flexnpu.extender.service), so among the pods it placed an Allocate has one candidate. A pod the
extender placed gets
exactly its assigned cards, split across its containers (flexnpu.deviceplugin.core.containers). A pod nobody
placed is packed here: a fraction on the healthy card with the fewest free units that still fit (best fit, so
large holes stay open), whole cards on fully free cards, on one HCCS ring when one has enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from flexnpu.annotations import BindPhase, CardAssignment
from flexnpu.cards import Card, hccs_ring
from flexnpu.deviceplugin.core.devices import ids_by_card, unit_order
from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.priority import DEFAULT_PRIORITY, Priority
from flexnpu.units import UnitsConfig, VnpuRequest, default_memory_mib, parse_vnpu_request

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SHOWN_IDS = 3
"""Device IDs a message quotes before it only counts the rest: a request may carry thousands."""


class AllocationError(FlexnpuError):
    """No card on this node can take the request; the message says what is missing."""


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ContainerRequest:
    """One container that asks for ``huawei.com/vnpu``, in kubelet's allocation order."""

    name: str
    units: int
    memory_mib: int | None = None
    """Its own ``huawei.com/vnpu-memory``, when it sets one."""
    init: bool = False
    """A (non-restartable) init container: it runs alone, before the app containers, so it does not add up."""


@dataclass(frozen=True)
class PendingPod:
    """A pod bound to this node that may be waiting for its Allocate, as the Kubernetes adapter read it."""

    ref: PodRef
    containers: tuple[ContainerRequest, ...]
    """Every container asking for units, in kubelet's order: init containers, then app containers."""
    memory_mib: int | None = None
    """The pod's ``huawei.com/vnpu-memory`` as the scheduler counts it (sum, or the largest init container)."""
    priority: Priority = DEFAULT_PRIORITY
    phase: BindPhase | None = None
    bind_time: datetime | None = None
    created: datetime = _EPOCH
    assignment: tuple[CardAssignment, ...] = field(default=())
    served: frozenset[str] = frozenset()
    """Containers already allocated (``flexnpu.io/allocated-containers``, and what this plugin remembers)."""

    @property
    def unit_requests(self) -> tuple[int, ...]:
        return tuple(c.units for c in self.containers)

    @property
    def units(self) -> int:
        """The pod's effective request: the app containers' sum, or the largest init container when larger."""
        running = sum(c.units for c in self.containers if not c.init)
        return max([running, *(c.units for c in self.containers if c.init)])

    @property
    def next_container(self) -> ContainerRequest | None:
        return next((c for c in self.containers if c.name not in self.served), None)

    @property
    def partly_served(self) -> bool:
        return any(c.name in self.served for c in self.containers) and self.next_container is not None

    @property
    def placed_by_extender(self) -> bool:
        """Its cards are known: the extender's assignment, or the one recorded at its first container."""
        recorded_here = self.phase is None and bool(self.served)
        return bool(self.assignment) and (self.phase is BindPhase.ALLOCATING or recorded_here)

    def serving(self, container: ContainerRequest) -> PendingPod:
        return replace(self, served=self.served | {container.name})

    @property
    def all_served(self) -> bool:
        return self.next_container is None


def admission_order(pod: PendingPod) -> tuple[bool, datetime, str, str]:
    """Kubelet's order: the pod it is in the middle of first, then by creation timestamp, then namespace/name."""
    return (not pod.partly_served, pod.created, pod.ref.namespace, pod.ref.name)


def match_pod(pods: Iterable[PendingPod], units: int) -> PendingPod | None:
    """The pod an Allocate of ``units`` device IDs is for: its ``next_container`` is the one being allocated."""
    waiting = sorted(
        (p for p in pods if p.phase in (None, BindPhase.ALLOCATING) and p.next_container is not None),
        key=admission_order,
    )
    for pod in waiting:
        container = pod.next_container
        if container is not None and container.units == units:
            return pod
    return None


def free_units(available_ids: Iterable[str], cards: Sequence[Card]) -> dict[str, int]:
    """Free units per card uuid, from the device IDs kubelet still has available."""
    return {uuid: len(ids) for uuid, ids in ids_by_card(available_ids, cards).items()}


def best_fit_card(cards: Sequence[Card], free: Mapping[str, int], units: int) -> Card | None:
    """The healthy card with the fewest free units that still holds ``units``; ties go to the lower index."""
    fitting = [c for c in cards if c.healthy and free.get(c.uuid, 0) >= units]
    return min(fitting, key=lambda c: (free[c.uuid], c.index, c.chip), default=None)


def choose_whole_cards(cards: Sequence[Card], free: Mapping[str, int], count: int, units: UnitsConfig) -> list[Card]:
    """``count`` fully free healthy cards, all on one HCCS ring when a ring has enough (the fullest such ring)."""
    empty = sorted(
        (c for c in cards if c.healthy and free.get(c.uuid, 0) >= units.advertised_per_card),
        key=lambda c: (c.index, c.chip),
    )
    if len(empty) < count:
        raise AllocationError(f"{count} whole card(s) requested, {len(empty)} fully free healthy card(s) on the node")
    rings: dict[int, list[Card]] = {}
    for card in empty:
        rings.setdefault(hccs_ring(card.index), []).append(card)
    one_ring = [r for r, members in rings.items() if len(members) >= count]
    if one_ring:
        ring = min(one_ring, key=lambda r: (len(rings[r]), r))
        return rings[ring][:count]
    spread = [c for _, members in sorted(rings.items(), key=lambda kv: (-len(kv[1]), kv[0])) for c in members]
    return spread[:count]


def best_fit_placement(
    cards: Sequence[Card], free: Mapping[str, int], request: VnpuRequest, units: UnitsConfig
) -> tuple[CardAssignment, ...]:
    """Where a pod no extender placed goes, given the free units per card."""
    if request.is_fraction:
        card = best_fit_card(cards, free, request.units)
        if card is None:
            most = max(free.values(), default=0)
            raise AllocationError(f"{request.units} unit(s) requested, the freest healthy card has {most}")
        return (_assignment(card, request, units),)
    return tuple(_assignment(c, request, units) for c in choose_whole_cards(cards, free, request.whole_cards, units))


def placement_from_ids(
    cards: Sequence[Card], ids: Sequence[str], request: VnpuRequest, units: UnitsConfig
) -> tuple[CardAssignment, ...]:
    """The card(s) holding most of the device IDs kubelet allocated (when no pod could be matched)."""
    counts = free_units(ids, cards)
    ranked = sorted((c for c in cards if c.uuid in counts), key=lambda c: (-counts[c.uuid], c.index, c.chip))
    if len(ranked) < request.cards:
        raise AllocationError(
            f"{describe_ids(ids)} name {len(ranked)} card(s) of this node, the request needs {request.cards}"
        )
    return tuple(_assignment(c, request, units) for c in ranked[: request.cards])


def _assignment(card: Card, request: VnpuRequest, units: UnitsConfig) -> CardAssignment:
    return CardAssignment(
        uuid=card.uuid,
        index=card.index,
        units=request.units_per_touched_card(units.units_per_card),
        memory_mib=default_memory_mib(request, card.hbm_mib, units.units_per_card),
    )


def describe_ids(ids: Iterable[str]) -> str:
    """``N device ID(s) (a, b, c, ...)``: the first few sorted IDs and the count, whatever the count."""
    ordered = sorted(set(ids))
    shown = ", ".join(ordered[:SHOWN_IDS]) + (", ..." if len(ordered) > SHOWN_IDS else "")
    return f"{len(ordered)} device ID(s) ({shown})"


def check_preferred_request(available: Sequence[str], must_include: Sequence[str], size: int) -> None:
    """A ValidationError naming the field when a GetPreferredAllocation request cannot be answered as asked.

    Kubelet asks for ``allocation_size`` IDs out of ``available_deviceIDs``, the ``must_include_deviceIDs`` among
    them; any other size (zero, negative, more than is available) would make the answer offer the wrong count.
    """
    free, must = set(available), set(must_include)
    if not must <= free:
        raise ValidationError("must_include_deviceIDs", describe_ids(must - free), "must all be available")
    if not max(1, len(must)) <= size <= len(free):
        raise ValidationError(
            "allocation_size", size, f"must be in {max(1, len(must))}..{len(free)} (must-include..available IDs)"
        )


def preferred_ids(
    placement: Sequence[CardAssignment],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    cards: Sequence[Card],
) -> list[str]:
    """``size`` IDs for kubelet: the must-include ones, then units of the placed cards, then any available.

    The filler only matters when kubelet's free IDs disagree with the placement; kubelet needs ``size`` IDs.
    """
    chosen = list(dict.fromkeys(must_include))
    remaining = sorted(set(available) - set(chosen), key=unit_order)
    by_card = ids_by_card(remaining, cards)
    for assigned in placement:
        wanted = assigned.units - _on_card(chosen, assigned.uuid, cards)
        chosen += by_card.get(assigned.uuid, [])[: max(0, wanted)]
    taken = set(chosen)
    chosen += [did for did in remaining if did not in taken]
    return chosen[:size]


def _on_card(ids: Sequence[str], uuid: str, cards: Sequence[Card]) -> int:
    return len(ids_by_card(ids, cards).get(uuid, []))


def request_of(pod: PendingPod | None, units: int, config: UnitsConfig) -> VnpuRequest:
    """The validated request behind an Allocate of ``units`` IDs, with the pod's memory when it names one."""
    return parse_vnpu_request(units, config, None if pod is None else pod.memory_mib)


def assignment_on_node(assignment: Sequence[CardAssignment], cards: Sequence[Card]) -> list[str]:
    """Problems with an extender's assignment on this node: unknown cards or unhealthy ones."""
    known = {c.uuid: c for c in cards}
    problems = []
    for a in assignment:
        card = known.get(a.uuid)
        if card is None:
            problems.append(f"card {a.uuid} (npu {a.index}) is not on this node")
        elif not card.healthy:
            problems.append(f"card {a.uuid} (npu {a.index}) is {card.health.value}")
    return problems
