"""The cluster's typical pod shapes, which fragmentation-aware placement measures fragmentation against.

FGD (Weng et al., USENIX ATC 2023) calls a card's free share a *fragment* for a pod shape that cannot use it, and
weighs shapes by how often they occur. :class:`ClusterStats` holds those shapes and weights; the extender builds
it from the pods it has seen (:func:`cluster_stats`), the openb benchmark from the trace. With no history,
:func:`uniform_stats` assumes every fraction of a card and one whole card are equally likely. The stats also keep
how much CPU the typical pod asks per unit of card: a node whose CPU runs out strands its free cards, and each card
model's *pressure*: the share of that model's cards that the pods restricted to a few models would take if the
workload filled the cluster (:func:`model_pressure`), so that pods that may run anywhere leave scarce models to the
pods that can run nowhere else.

Public names (stable): :class:`Shape`, :class:`ClusterStats`, :func:`cluster_stats`, :func:`cluster_stats_of_counts`,
:func:`demand_shape`, :func:`uniform_stats`, :func:`model_cards`, :func:`model_pressure`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flexnpu.extender.core.model import NodeState, PodDemand

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
    # Card model -> share of its cards the model-restricted pods would take in a full cluster (absent: 0).
    pressure: Mapping[str, float] = field(default_factory=dict)


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


def cluster_stats(
    shapes: Iterable[Shape],
    units_per_card: int,
    coverage: float = DEFAULT_COVERAGE,
    cards_per_model: Mapping[str, int] | None = None,
) -> ClusterStats:
    """The most frequent shapes of ``shapes`` (one entry per pod) that together cover ``coverage`` of the pods.

    ``cpu_per_unit`` is measured over all the card-using pods, whatever the coverage, and so is the pressure on
    each model of ``cards_per_model`` (the cluster's cards; None: no pressure).
    """
    return cluster_stats_of_counts(
        Counter(Shape(s.units, s.cards, s.cpu_milli, s.models) for s in shapes),
        units_per_card,
        coverage,
        cards_per_model,
    )


def cluster_stats_of_counts(
    counts: Mapping[Shape, int],
    units_per_card: int,
    coverage: float = DEFAULT_COVERAGE,
    cards_per_model: Mapping[str, int] | None = None,
) -> ClusterStats:
    """:func:`cluster_stats` from pods counted per shape (shapes of weight 1), for a caller that keeps the counts
    up to date as pods come and go instead of rescanning them; the same result as from the pods themselves."""
    present = {shape: n for shape, n in counts.items() if n > 0}
    total = sum(present.values())
    if total == 0:
        return uniform_stats(units_per_card)
    pressure = model_pressure(present, cards_per_model or {})
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
        pressure,
    )


def model_cards(nodes: Iterable[NodeState]) -> dict[str, int]:
    """Healthy cards per model over ``nodes``: the capacity :func:`model_pressure` weighs demand against."""
    cards: Counter[str] = Counter()
    for node in nodes:
        cards.update(card.model for card in node.cards if card.healthy)
    return dict(cards)


def model_pressure(counts: Mapping[Shape, int], cards_per_model: Mapping[str, int]) -> dict[str, float]:
    """Per card model, the share of its cards that pods restricted to some models would take if this workload
    filled the cluster's ``cards_per_model``.

    Each restricted pod's cards are spread over the models it allows in proportion to their card counts (the
    models the cluster lacks are left out; a pod allowed none of them adds nothing). The workload is scaled so
    that all pods together ask for every card: pressure(m) = (restricted demand on m / all demand) x (all cards /
    cards of m). A pod that may use any model adds demand but no pressure; 0.3 means that three cards in ten of
    the model will be wanted by pods that cannot run elsewhere.
    """
    all_cards = sum(n for n in cards_per_model.values() if n > 0)
    demand = sum(s.units * s.cards * n for s, n in counts.items() if n > 0)
    if not all_cards or not demand:
        return {}
    restricted: dict[str, float] = {}
    for shape, n in counts.items():
        if n <= 0 or not shape.models or not shape.cards:
            continue
        allowed = {m: cards_per_model[m] for m in shape.models if cards_per_model.get(m, 0) > 0}
        room = sum(allowed.values())
        for m, cards in allowed.items():
            restricted[m] = restricted.get(m, 0.0) + shape.units * shape.cards * n * cards / room
    return {m: restricted[m] / demand * all_cards / cards_per_model[m] for m in restricted}


def uniform_stats(units_per_card: int) -> ClusterStats:
    """Every fraction 1..U of one card and one whole card, equally likely, no CPU."""
    fractions = [Shape(units=u, cards=1) for u in range(1, units_per_card + 1)]
    weight = 1.0 / len(fractions)
    return ClusterStats(tuple(Shape(s.units, s.cards, weight=weight) for s in fractions), units_per_card)


def _shape_order(shape: Shape) -> tuple[int, int, int, tuple[str, ...]]:
    return shape.cards, shape.units, shape.cpu_milli, tuple(sorted(shape.models))
