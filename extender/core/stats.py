"""The cluster's typical pod shapes, which fragmentation-aware placement measures fragmentation against.

FGD (Weng et al., USENIX ATC 2023) calls a card's free share a *fragment* for a pod shape that cannot use it, and
weighs shapes by how often they occur. :class:`ClusterStats` holds those shapes and weights; the extender builds
it from the pods it has seen (:func:`cluster_stats`), the openb benchmark from the trace. With no history,
:func:`uniform_stats` assumes every fraction of a card and one whole card are equally likely. The stats also keep
how much CPU the typical pod asks per unit of card: a node whose CPU runs out strands its free cards.

Public names (stable): :class:`Shape`, :class:`ClusterStats`, :func:`cluster_stats`, :func:`cluster_stats_of_counts`,
:func:`demand_shape`, :func:`uniform_stats`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flexnpu.extender.core.model import PodDemand

DEFAULT_COVERAGE = 0.95


@dataclass(frozen=True)
class Shape:
    """A typical pod: ``units`` of U on each of ``cards`` cards (0 cards = CPU only), CPU, allowed models."""

    units: int
    cards: int
    cpu_milli: int = 0
    models: frozenset[str] = frozenset()
    weight: float = 1.0

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True, eq=False)
class ClusterStats:
    """Typical shapes (weights sum to 1) for a cluster cut into ``units_per_card`` units per card.

    Compared by identity on purpose: the core memoises evaluations per stats object, and a new object is a new
    view of the workload.
    """

    shapes: tuple[Shape, ...]
    units_per_card: int
    cpu_per_unit: float = 0.0  # CPU milli the typical pod asks per unit of card it takes (0 = unknown)


def demand_shape(demand: PodDemand, units_per_card: int, weight: float = 1.0) -> Shape:
    """The shape of one pod (a CPU-only demand gives a CPU-only shape)."""
    request = demand.request
    if request.units == 0:
        return cpu_only_shape(demand.cpu_milli, weight)
    cards = 1 if request.is_fraction else request.whole_cards
    units = request.units_per_touched_card(units_per_card)
    return Shape(units=units, cards=cards, cpu_milli=demand.cpu_milli, models=demand.models, weight=weight)


def cpu_only_shape(cpu_milli: int, weight: float = 1.0) -> Shape:
    return Shape(units=0, cards=0, cpu_milli=cpu_milli, weight=weight)


def cluster_stats(shapes: Iterable[Shape], units_per_card: int, coverage: float = DEFAULT_COVERAGE) -> ClusterStats:
    """The most frequent shapes of ``shapes`` (one entry per pod) that together cover ``coverage`` of the pods.

    ``cpu_per_unit`` is measured over all the card-using pods, whatever the coverage.
    """
    return cluster_stats_of_counts(
        Counter(Shape(s.units, s.cards, s.cpu_milli, s.models) for s in shapes), units_per_card, coverage
    )


def cluster_stats_of_counts(
    counts: Mapping[Shape, int], units_per_card: int, coverage: float = DEFAULT_COVERAGE
) -> ClusterStats:
    """:func:`cluster_stats` from pods counted per shape (shapes of weight 1), for a caller that keeps the counts
    up to date as pods come and go instead of rescanning them; the same result as from the pods themselves."""
    present = {shape: n for shape, n in counts.items() if n > 0}
    total = sum(present.values())
    if total == 0:
        return uniform_stats(units_per_card)
    card_units = sum(s.units * s.cards * n for s, n in present.items())
    cpu_per_unit = sum(s.cpu_milli * n for s, n in present.items() if s.cards) / card_units if card_units else 0.0
    kept: list[tuple[Shape, int]] = []
    covered = 0
    for shape, count in sorted(present.items(), key=lambda kv: (-kv[1], _shape_order(kv[0]))):
        if covered >= coverage * total:
            break
        kept.append((shape, count))
        covered += count
    return ClusterStats(
        tuple(Shape(s.units, s.cards, s.cpu_milli, s.models, c / covered) for s, c in kept),
        units_per_card,
        cpu_per_unit,
    )


def uniform_stats(units_per_card: int) -> ClusterStats:
    """Every fraction 1..U of one card and one whole card, equally likely, no CPU."""
    fractions = [Shape(units=u, cards=1) for u in range(1, units_per_card + 1)]
    weight = 1.0 / len(fractions)
    return ClusterStats(tuple(Shape(s.units, s.cards, weight=weight) for s in fractions), units_per_card)


def _shape_order(shape: Shape) -> tuple[int, int, int, tuple[str, ...]]:
    return shape.cards, shape.units, shape.cpu_milli, tuple(sorted(shape.models))
