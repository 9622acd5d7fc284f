"""Fragmentation of a node against the cluster's typical shapes (FGD, Weng et al., USENIX ATC 2023).

For one typical shape, a node's *fragment* is the free compute that shape cannot use: everything free when the
shape fits nowhere on the node (too little CPU, too few usable cards, a CPU-only shape), otherwise the free units
of the cards too small (or of the wrong model) for it. A node's fragmentation is the frequency-weighted sum over
shapes. FGD places a pod where this sum grows least.

:class:`NodeProfile` precomputes, per shape, how many cards can hold it and how much free compute it cannot use,
so that the change caused by one candidate placement costs O(shapes) instead of O(shapes x cards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flexnpu.extender.core.model import NodeState
from flexnpu.extender.core.stats import ClusterStats

# One shape the node can still take: weight, cards it needs, its CPU, units it needs per card (in this node's
# units), which card positions it may use, how many of them can hold it, and the free units it cannot use.
OpenShape = tuple[float, int, int, float, tuple[bool, ...], int, int]


@dataclass(frozen=True)
class NodeProfile:
    """A node seen through the typical shapes.

    Shapes that cannot be placed on the node at all count all its free units as fragment, and placing a pod
    never makes them placeable again, so only their total weight is kept; the others keep what is needed to
    update their fragment when one pod is added.
    """

    total_free: int  # free units over healthy cards
    blocked_weight: float
    open_shapes: tuple[OpenShape, ...]
    value: float  # the node's weighted fragmentation


def node_profile(node: NodeState, stats: ClusterStats) -> NodeProfile:
    scale = node.units_per_card / stats.units_per_card
    frees = [c.units_total - c.units_used if c.healthy else 0 for c in node.cards]
    total_free = sum(frees)
    cpu_free = node.cpu_milli_free if node.cpu_tracked else None
    blocked_weight = 0.0
    open_shapes: list[OpenShape] = []
    for shape in stats.shapes:
        need = shape.units * scale
        ok = tuple(c.healthy and shape.allows(c.model) for c in node.cards)
        fits = [ok[i] and frees[i] >= need for i in range(len(frees))]
        usable = sum(fits)
        if shape.cards == 0 or usable < shape.cards or (cpu_free is not None and cpu_free < shape.cpu_milli):
            blocked_weight += shape.weight
            continue
        fragment = sum(f for f, fit in zip(frees, fits, strict=True) if not fit)
        open_shapes.append((shape.weight, shape.cards, shape.cpu_milli, need, ok, usable, fragment))
    value = blocked_weight * total_free + sum(row[0] * row[6] for row in open_shapes)
    return NodeProfile(total_free, blocked_weight, tuple(open_shapes), value)


def fragmentation_after(
    node: NodeState, profile: NodeProfile, positions: Sequence[int], units: int, cpu_milli: int
) -> float:
    """The node's weighted fragmentation once a pod took ``units`` on each card of ``positions``."""
    cards = node.cards
    frees = [cards[p].units_total - cards[p].units_used for p in positions]
    cpu_free = node.cpu_milli_free - cpu_milli if node.cpu_tracked else None
    total_free = profile.total_free - units * len(positions)
    value = profile.blocked_weight * total_free
    for weight, needed, cpu, need, ok, usable, fragment in profile.open_shapes:
        for p, free in zip(positions, frees, strict=True):
            if ok[p] and free >= need:
                if free - units < need:
                    usable -= 1
                    fragment += free - units
            else:
                fragment -= units
        blocked = usable < needed or (cpu_free is not None and cpu_free < cpu)
        value += weight * (total_free if blocked else fragment)
    return value
