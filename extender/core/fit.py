"""Does a pod fit a node, and if not, why not: the extender's ``filter`` decision as a pure function.

A node fits when its CPU and memory (each if tracked) cover the pod's and enough of its cards can each take the
pod's per-card share: healthy, of an allowed model, with the free units and free memory. A fraction needs one such
card, ``k`` whole cards need ``k``. A demand of zero units (``VnpuRequest(0, 0)``, see ``model.CPU_ONLY``) is a
CPU-only pod: it needs no card at all; the openb replay places those too, because their CPU strands cards. When the
node does not fit, the :class:`Refusal` says why in one human-readable sentence and in structured fields (which card
came closest, how many units or MiB it lacks), so the extender can put it in ``FailedNodes`` and in a Kubernetes
Event unchanged.

Public names (stable): :class:`NodeFit`, :class:`Refusal`, :class:`RefusalKind`, :func:`fit_node`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flexnpu.extender.core.model import CardState, NodeState, PodDemand


class RefusalKind(enum.StrEnum):
    """Why a node cannot take a pod, most fundamental first (the first that applies is reported)."""

    REQUEST = "request"  # the request makes no sense on this node (more units than a card has)
    CPU = "cpu"
    HOST_MEMORY = "node-memory"
    NO_CARDS = "no-cards"
    TOO_FEW_CARDS = "too-few-cards"  # k whole cards asked, the node has fewer cards in all
    MODEL = "model"
    UNHEALTHY = "unhealthy"
    UNITS = "units"
    MEMORY = "memory"


@dataclass(frozen=True)
class Refusal:
    """A node that cannot take the pod: ``reason`` for people, the other fields for code."""

    node: str
    kind: RefusalKind
    reason: str
    card: str | None = None  # uuid of the card that came closest, when one card is to blame
    missing_units: int = 0
    missing_memory_mib: int = 0
    missing_cpu_milli: int = 0
    missing_host_memory_mib: int = 0


@dataclass(frozen=True)
class NodeFit:
    """A node that can take the pod: ``positions`` are the cards (indices into ``node.cards``) that each can."""

    node: NodeState
    positions: tuple[int, ...]
    units: int  # units the pod takes on each card it touches
    cards_needed: int  # 1 for a fraction, k for k whole cards, 0 for a CPU-only pod

    @property
    def name(self) -> str:
        return self.node.name


def fit_node(demand: PodDemand, node: NodeState) -> NodeFit | Refusal:
    """Whether ``node`` can take ``demand`` right now, and on which cards."""
    request = demand.request
    units = demand.units_per_card(node.units_per_card)
    if request.is_fraction and request.units > node.units_per_card:
        return _refuse(
            node,
            RefusalKind.REQUEST,
            f"asks {request.units} units of one card but cards here have {node.units_per_card}",
        )
    if node.cpu_milli_total > 0 and demand.cpu_milli > node.cpu_milli_total - node.cpu_milli_used:
        missing = demand.cpu_milli - node.cpu_milli_free
        return Refusal(
            node.name,
            RefusalKind.CPU,
            f"node {node.name}: needs {demand.cpu_milli}m CPU, {node.cpu_milli_free}m free",
            missing_cpu_milli=missing,
        )
    if node.host_memory_tracked and demand.host_memory_mib > node.host_memory_mib_free:
        return Refusal(
            node.name,
            RefusalKind.HOST_MEMORY,
            f"node {node.name}: needs {demand.host_memory_mib} MiB of memory, {node.host_memory_mib_free} MiB free",
            missing_host_memory_mib=demand.host_memory_mib - node.host_memory_mib_free,
        )
    if request.units == 0:
        return NodeFit(node=node, positions=(), units=0, cards_needed=0)
    positions = tuple(i for i, card in enumerate(node.cards) if _card_fits(demand, node, card, units))
    needed = request.cards
    if len(positions) >= needed:
        return NodeFit(node=node, positions=positions, units=units, cards_needed=needed)
    return _explain(demand, node, units, needed, len(positions))


def _card_fits(demand: PodDemand, node: NodeState, card: CardState, units: int) -> bool:
    return (
        card.healthy
        and card.units_total - card.units_used >= units
        and demand.allows(card.model)
        and card.memory_total_mib - card.memory_used_mib >= demand.memory_mib(card, node.units_per_card)
    )


def _refuse(node: NodeState, kind: RefusalKind, what: str) -> Refusal:
    return Refusal(node.name, kind, f"node {node.name}: {what}")


def _explain(demand: PodDemand, node: NodeState, units: int, needed: int, fitting: int) -> Refusal:
    """The most fundamental reason why fewer than ``needed`` cards of ``node`` can take the pod."""
    if not node.cards:
        return _refuse(node, RefusalKind.NO_CARDS, "has no cards")
    if needed > len(node.cards):
        return _refuse(node, RefusalKind.TOO_FEW_CARDS, f"needs {needed} whole cards, the node has {len(node.cards)}")
    allowed = [c for c in node.cards if demand.allows(c.model)]
    if len(allowed) < needed:
        wanted = "|".join(sorted(demand.models))
        have = "|".join(sorted({c.model for c in node.cards}))
        return _refuse(node, RefusalKind.MODEL, f"needs card model {wanted}, the node has {have}")
    healthy = [c for c in allowed if c.healthy]
    if len(healthy) < needed:
        return _refuse(
            node,
            RefusalKind.UNHEALTHY,
            f"{len(allowed) - len(healthy)} of {len(allowed)} usable cards are unhealthy, {needed} needed",
        )
    return _short_of_room(demand, node, healthy, units, needed, fitting)


def _short_of_room(
    demand: PodDemand, node: NodeState, healthy: list[CardState], units: int, needed: int, fitting: int
) -> Refusal:
    """Healthy usable cards exist but lack units or memory: name the closest card and what it misses."""

    def shortfall(card: CardState) -> tuple[int, int]:
        memory = demand.memory_mib(card, node.units_per_card)
        return max(0, units - card.units_free), max(0, memory - card.memory_free_mib)

    blocked = [c for c in healthy if shortfall(c) != (0, 0)]
    closest = min(blocked, key=lambda c: (shortfall(c)[0], shortfall(c)[1], c.index))
    missing_units, missing_memory = shortfall(closest)
    scope = f"{fitting} of {needed} cards have room; " if needed > 1 else ""
    if missing_units:
        kind = RefusalKind.UNITS
        what = (
            f"{scope}closest card {closest.index} ({closest.uuid}) has {closest.units_free} free units, {units} needed"
        )
    else:
        kind = RefusalKind.MEMORY
        what = (
            f"{scope}closest card {closest.index} ({closest.uuid}) has {closest.memory_free_mib} MiB free "
            f"memory, {demand.memory_mib(closest, node.units_per_card)} MiB needed"
        )
    return Refusal(
        node.name,
        kind,
        f"node {node.name}: {what}",
        card=closest.uuid,
        missing_units=missing_units,
        missing_memory_mib=missing_memory,
    )
