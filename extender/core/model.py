"""The extender's snapshot of the cluster as the placement core sees it: cards, nodes and what a pod asks for.

These are plain frozen values. The extender's watch cache (outside ``core``) builds them from node inventories and
pod assignments with :func:`node_state`; the placement core (:mod:`flexnpu.extender.core.placement`) only reads
them, and the openb replay benchmark builds them from CSV rows. Nothing here talks to Kubernetes.

Public names (stable): :class:`CardState`, :class:`NodeState`, :class:`PodDemand`, :func:`node_state`,
:data:`CPU_ONLY` (the request of a pod that needs CPU only, for replays; never parsed from a pod).

Units: a card offers ``units_total`` units (U times the oversubscription factor, as the device plugin advertises);
a request is interpreted against the node's ``units_per_card`` U: ``u <= U`` is u/U of one card, ``k*U`` is k
whole cards, each of which takes U units of its card. Memory is never oversubscribed. CPU and the node's own
(host) memory are counted only when the node says how much it has (``cpu_milli_total == 0`` or
``host_memory_mib_total == 0`` means "not tracked": every pod fits as far as that resource goes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.priority import Priority
from flexnpu.units import VnpuRequest, default_memory_mib

CPU_ONLY: Final = VnpuRequest(units=0, whole_cards=0)


@dataclass(frozen=True)
class CardState:
    """One card as the scheduler sees it: capacity and what the pods bound to it already use."""

    uuid: str
    index: int
    model: str
    units_total: int
    units_used: int
    memory_total_mib: int
    memory_used_mib: int
    healthy: bool

    @property
    def units_free(self) -> int:
        return self.units_total - self.units_used

    @property
    def memory_free_mib(self) -> int:
        return self.memory_total_mib - self.memory_used_mib

    def taking(self, units: int, memory_mib: int) -> CardState:
        """This card after a pod took ``units`` and ``memory_mib`` of it (negative values give them back)."""
        return replace(self, units_used=self.units_used + units, memory_used_mib=self.memory_used_mib + memory_mib)


@dataclass(frozen=True)
class NodeState:
    """One node: its cards (in inventory order), how they are cut, and optionally its CPU."""

    name: str
    cards: tuple[CardState, ...]
    units_per_card: int
    cpu_milli_total: int = 0
    cpu_milli_used: int = 0
    host_memory_mib_total: int = 0  # the node's allocatable memory (not the cards')
    host_memory_mib_used: int = 0

    @property
    def cpu_tracked(self) -> bool:
        return self.cpu_milli_total > 0

    @property
    def cpu_milli_free(self) -> int:
        return self.cpu_milli_total - self.cpu_milli_used

    @property
    def host_memory_tracked(self) -> bool:
        return self.host_memory_mib_total > 0

    @property
    def host_memory_mib_free(self) -> int:
        return self.host_memory_mib_total - self.host_memory_mib_used

    def card_position(self, uuid: str) -> int:
        """Where the card ``uuid`` sits in ``cards``; KeyError when the node has no such card."""
        for position, card in enumerate(self.cards):
            if card.uuid == uuid:
                return position
        raise KeyError(uuid)

    def with_assignments(
        self, assignments: Iterable[CardAssignment], cpu_milli: int = 0, host_memory_mib: int = 0
    ) -> NodeState:
        """This node after a pod took ``assignments`` (and ``cpu_milli`` of CPU, ``host_memory_mib`` of its memory).
        Unknown cards are ignored."""
        by_uuid: dict[str, tuple[int, int]] = {}
        for a in assignments:
            units, memory = by_uuid.get(a.uuid, (0, 0))
            by_uuid[a.uuid] = (units + a.units, memory + a.memory_mib)
        cards = tuple(c.taking(*by_uuid[c.uuid]) if c.uuid in by_uuid else c for c in self.cards)
        return replace(
            self,
            cards=cards,
            cpu_milli_used=self.cpu_milli_used + cpu_milli,
            host_memory_mib_used=self.host_memory_mib_used + host_memory_mib,
        )


@dataclass(frozen=True)
class PodDemand:
    """What one pod asks for: a validated vnpu request, allowed card models (empty = any), CPU, the node's memory
    (``host_memory_mib``, not the cards') and priority."""

    request: VnpuRequest
    models: frozenset[str] = frozenset()
    cpu_milli: int = 0
    priority: Priority = Priority.NORMAL
    host_memory_mib: int = 0

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def units_per_card(self, node_units_per_card: int) -> int:
        """Units the pod takes on each card it touches, on a node cut into ``node_units_per_card``."""
        return self.request.units_per_touched_card(node_units_per_card)

    def memory_mib(self, card: CardState, node_units_per_card: int) -> int:
        """Memory the pod takes on ``card``: its own ``vnpu-memory`` or the default rule of DESIGN.md section 3."""
        return default_memory_mib(self.request, card.memory_total_mib, node_units_per_card)


def card_state(inventory: Inventory, position: int) -> CardState:
    """The unused state of the inventory's card at ``position``."""
    card = inventory.cards[position]
    return CardState(
        uuid=card.uuid,
        index=card.index,
        model=card.model,
        units_total=inventory.units.advertised_per_card,
        units_used=0,
        memory_total_mib=card.hbm_mib,
        memory_used_mib=0,
        healthy=card.healthy,
    )


def node_state(
    name: str,
    inventory: Inventory,
    assignments: Iterable[CardAssignment] = (),
    cpu_milli_total: int = 0,
    cpu_milli_used: int = 0,
    host_memory_mib_total: int = 0,
    host_memory_mib_used: int = 0,
) -> NodeState:
    """A node from its ``flexnpu.io/inventory`` and the ``flexnpu.io/assigned`` entries of the pods bound to it.

    ``assignments`` is every assignment of every live pod on the node, flattened; entries naming a card the
    inventory no longer lists are ignored (the card left; its pods will be evicted by kubelet).
    """
    empty = NodeState(
        name=name,
        cards=tuple(card_state(inventory, i) for i in range(len(inventory.cards))),
        units_per_card=inventory.units.units_per_card,
        cpu_milli_total=cpu_milli_total,
        cpu_milli_used=cpu_milli_used,
        host_memory_mib_total=host_memory_mib_total,
        host_memory_mib_used=host_memory_mib_used,
    )
    return empty.with_assignments(assignments)
