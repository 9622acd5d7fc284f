"""Which lower-priority flexnpu pods to evict so that a ``high`` pod fits a node: a pure decision, no I/O.

kube-scheduler's own preemption knows nothing of card units and memory. Its ``preempt`` call to the extender
names, per candidate node, the pods it would evict anyway; this module answers with the smallest set of pods
that makes the flexnpu demand fit there too, or None when no eviction can. Only pods of strictly lower flexnpu
priority are ever proposed, and only for ``high`` pods (DESIGN.md section 12: "a high-priority pod may evict
lower-priority slices").

Fewest victims first: for a fraction of one card, each card is cleared greedily (lowest priority, largest share
first) and the card needing the fewest evictions wins; for k whole cards, the k cards whose occupants are fewest
are cleared. The result is checked with the placement core's :func:`fit_node`, so it never disagrees with filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flexnpu.annotations import CardAssignment
from flexnpu.extender.core.fit import NodeFit, fit_node
from flexnpu.extender.core.model import CardState, NodeState, PodDemand
from flexnpu.priority import Priority


@dataclass(frozen=True)
class Occupant:
    """A pod holding shares on the node: its uid, flexnpu priority rank and card assignments."""

    uid: str
    rank: int
    assignments: tuple[CardAssignment, ...]

    def on(self, uuid: str) -> tuple[int, int]:
        """(units, memory MiB) it holds on card ``uuid``."""
        units = sum(a.units for a in self.assignments if a.uuid == uuid)
        memory = sum(a.memory_mib for a in self.assignments if a.uuid == uuid)
        return units, memory


def without(node: NodeState, occupants: Iterable[Occupant]) -> NodeState:
    """The node as it would be once ``occupants`` are gone."""
    freed = [CardAssignment(a.uuid, a.index, -a.units, -a.memory_mib) for o in occupants for a in o.assignments]
    return node.with_assignments(freed)


def victims_for(
    demand: PodDemand, node: NodeState, occupants: Sequence[Occupant], already: frozenset[str] = frozenset()
) -> tuple[str, ...] | None:
    """Uids to evict on ``node`` (``already`` first, then the fewest more), or None when nothing would do."""
    chosen = [o for o in occupants if o.uid in already]
    base = without(node, chosen)
    if isinstance(fit_node(demand, base), NodeFit):
        return tuple(sorted(already))
    if demand.priority is not Priority.HIGH:
        return None
    evictable = [o for o in occupants if o.uid not in already and o.rank < demand.priority.rank]
    extra = _fraction(demand, base, evictable) if demand.request.is_fraction else _whole(demand, base, evictable)
    if extra is None or not isinstance(fit_node(demand, without(base, extra)), NodeFit):
        return None
    return tuple(sorted(already)) + tuple(o.uid for o in extra)


def _usable(demand: PodDemand, card: CardState) -> bool:
    return card.healthy and demand.allows(card.model)


def _fraction(demand: PodDemand, node: NodeState, evictable: Sequence[Occupant]) -> list[Occupant] | None:
    units = demand.units_per_card(node.units_per_card)
    best: tuple[tuple[int, int, int], list[Occupant]] | None = None
    for card in node.cards:
        if not _usable(demand, card):
            continue
        cleared = _clear_card(card, units, demand.memory_mib(card, node.units_per_card), evictable)
        if cleared is None:
            continue
        key = (len(cleared), sum(o.rank for o in cleared), card.index)
        if best is None or key < best[0]:
            best = (key, cleared)
    return None if best is None else best[1]


def _clear_card(card: CardState, units: int, memory: int, evictable: Sequence[Occupant]) -> list[Occupant] | None:
    """Greedy: lowest priority, then largest share, until the card has ``units`` and ``memory`` free."""
    here = [o for o in evictable if o.on(card.uuid) != (0, 0)]
    here.sort(key=lambda o: (o.rank, -o.on(card.uuid)[0], -o.on(card.uuid)[1], o.uid))
    free_units, free_memory = card.units_free, card.memory_free_mib
    taken: list[Occupant] = []
    for occupant in here:
        if free_units >= units and free_memory >= memory:
            break
        got_units, got_memory = occupant.on(card.uuid)
        free_units, free_memory = free_units + got_units, free_memory + got_memory
        taken.append(occupant)
    return taken if free_units >= units and free_memory >= memory else None


def _whole(demand: PodDemand, node: NodeState, evictable: Sequence[Occupant]) -> list[Occupant] | None:
    """Clear the k cards with the fewest occupants; a card holding any pod that may not be evicted is skipped."""
    costs: list[tuple[int, int, list[Occupant]]] = []
    for card in node.cards:
        if not _usable(demand, card):
            continue
        here = [o for o in evictable if o.on(card.uuid) != (0, 0)]
        held = sum(o.on(card.uuid)[0] for o in here)
        if card.units_used > held:
            continue  # someone who may not be evicted holds part of this card
        costs.append((len(here), card.index, here))
    needed = demand.request.cards
    if len(costs) < needed:
        return None
    costs.sort(key=lambda c: (c[0], c[1]))
    victims: dict[str, Occupant] = {}
    for _, _, here in costs[:needed]:
        victims.update((o.uid, o) for o in here)
    return sorted(victims.values(), key=lambda o: (o.rank, o.uid))
