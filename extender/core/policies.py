"""Placement policies: how good it is to put a pod on given cards of a node (lower cost is better).

Each policy prices one candidate placement (a node and the card positions the pod would take). The placement
module enumerates the candidates, keeps the cheapest per node, turns costs into the extender's 0..10 scores and
picks the cards at bind. Policies:

- ``binpack``: fill the fullest node and the fullest card first (keeps whole nodes and cards free).
- ``spread``: the emptiest node and card first (least interference between tenants).
- ``bestfit``: the node with the least CPU and compute left afterwards, tightest card (the paper's Best-fit).
- ``fgd``: fragmentation gradient descent, the published algorithm: least increase of fragmentation against
  the typical shapes covering 95% of pods (:mod:`flexnpu.extender.core.fragmentation`), ties left to the
  scheduler. On openb the 95% cut drops the rare multi-card shapes, so nothing keeps whole nodes free for them
  (the benchmark also reports ``fgd-all``, the same cost over every shape, which comes closer to the paper).
- ``default`` (alias ``fgd+``): FGD's gradient over the full shape distribution, plus two terms FGD lacks:
  the growth of the compute a node strands because its CPU runs short (free units beyond what its free CPU can
  feed at the typical pod's CPU per unit; FGD sees CPU only through the next pod), and the pressure on the model
  of the cards taken (the share of that model's cards that pods restricted to few models will want,
  :func:`flexnpu.extender.core.stats.model_pressure`: a pod that may run anywhere leaves scarce models to those
  that cannot). Nodes it prices alike all score 10, and kube-scheduler's own score plugins choose among them.
  Measured on the openb traces (``flexnpu bench placement``) against our FGD and Best-fit and the published FGD,
  and through the real kube-scheduler (``flexnpu bench dra_placement``). An earlier pull towards the fullest node
  (consolidation) is gone: neutral on openb once the pressure term keeps flexible pods off scarce models, it cost
  5.8 points at 94 nodes (a unique best node overrides kube-scheduler's spreading among equals).

Public names (stable): :class:`Policy`, :data:`POLICIES`, :func:`policy`, :data:`DEFAULT_POLICY`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from flexnpu.errors import ValidationError
from flexnpu.extender.core.fit import NodeFit
from flexnpu.extender.core.fragmentation import NodeProfile, fragmentation_after
from flexnpu.extender.core.model import CardState, NodeState, PodDemand
from flexnpu.extender.core.stats import ClusterStats

ProfileOf = Callable[[NodeState], NodeProfile]
CostFn = Callable[["Candidate"], float]

# Weight of a secondary criterion: small enough never to overturn the primary one (which moves in whole units
# or in shares of at least 1/1000 of a node), large enough to order candidates the primary one ties.
TIE: Final = 1e-9


@dataclass(frozen=True)
class Candidate:
    """One way to place the pod: ``positions`` of ``fit.node.cards``, each taking ``fit.units`` units."""

    demand: PodDemand
    fit: NodeFit
    positions: tuple[int, ...]
    stats: ClusterStats
    profile_of: ProfileOf


@dataclass(frozen=True)
class Policy:
    """A named cost function over candidates and the order in which it prefers cards of one node."""

    name: str
    description: str
    cost: CostFn
    tight_cards_first: bool
    uses_stats: bool = False
    shape_coverage: float = 0.95  # share of pods the typical shapes it measures fragmentation against cover

    def card_order(self, card: CardState) -> tuple[int, int, int]:
        """Sort key of a card among equally good ones (tightest or loosest first, then by index)."""
        sign = 1 if self.tight_cards_first else -1
        return sign * card.units_free, sign * card.memory_free_mib, card.index


def _node_free_share_after(c: Candidate) -> float:
    """The share of the node's compute left free once the pod is placed (0 = full)."""
    cards = c.fit.node.cards
    total = sum(card.units_total for card in cards if card.healthy)
    free = sum(card.units_free for card in cards if card.healthy) - c.fit.units * len(c.positions)
    return free / total if total else 0.0


def _card_free_share_after(c: Candidate) -> float:
    """Mean share left free on the touched cards once the pod is placed."""
    cards = c.fit.node.cards
    if not c.positions:
        return 0.0
    return sum((cards[p].units_free - c.fit.units) / cards[p].units_total for p in c.positions) / len(c.positions)


def _cpu_free_share_after(c: Candidate) -> float:
    node = c.fit.node
    if not node.cpu_tracked:
        return 0.0
    return (node.cpu_milli_free - c.demand.cpu_milli) / node.cpu_milli_total


def _binpack(c: Candidate) -> float:
    return _node_free_share_after(c) + TIE * _card_free_share_after(c)


def _spread(c: Candidate) -> float:
    return -_node_free_share_after(c) - TIE * _card_free_share_after(c)


def _bestfit(c: Candidate) -> float:
    return _cpu_free_share_after(c) + _node_free_share_after(c) + TIE * _card_free_share_after(c)


def _gradient(c: Candidate) -> float:
    """Increase of the node's fragmentation, in cards (negative: the pod fills fragments)."""
    node = c.fit.node
    profile = c.profile_of(node)
    after = fragmentation_after(node, profile, c.positions, c.fit.units, c.demand.cpu_milli)
    return (after - profile.value) / node.units_per_card


def _fgd(c: Candidate) -> float:
    return _gradient(c)


# Weights of the default policy's terms (per card of compute), tuned on openb (seed 42: stranding on the default,
# gpushare80 and gpuspec20 traces, pressure on gpuspec10 and gpuspec20).
STRANDED_WEIGHT: Final = 0.5
PRESSURE_WEIGHT: Final = 0.5


def _stranded(node: NodeState, stats: ClusterStats, units: int, cpu_milli: int) -> float:
    """Free units the node's free CPU cannot feed at the typical CPU per unit, after taking units and CPU."""
    if not node.cpu_tracked or stats.cpu_per_unit <= 0:
        return 0.0
    cpu_per_unit = stats.cpu_per_unit * stats.units_per_card / node.units_per_card
    free = sum(card.units_total - card.units_used for card in node.cards if card.healthy) - units
    return max(0.0, free - (node.cpu_milli_free - cpu_milli) / cpu_per_unit)


def _stranding(c: Candidate) -> float:
    """Growth of the compute the node strands for lack of CPU, in cards."""
    node = c.fit.node
    after = _stranded(node, c.stats, c.fit.units * len(c.positions), c.demand.cpu_milli)
    return (after - _stranded(node, c.stats, 0, 0)) / node.units_per_card


def _pressure(c: Candidate) -> float:
    """The cards taken, in cards, each weighed by the pressure on its model (0 where no pod is restricted to it).
    Alike on every node of one model, so it steers only pods that several models accept."""
    pressure = c.stats.pressure
    if not pressure:
        return 0.0
    cards = c.fit.node.cards
    share = c.fit.units / c.fit.node.units_per_card
    return share * sum(pressure.get(cards[p].model, 0.0) for p in c.positions)


def _fgd_plus(c: Candidate) -> float:
    return (
        _gradient(c)
        + STRANDED_WEIGHT * _stranding(c)
        + PRESSURE_WEIGHT * _pressure(c)
        + TIE * _card_free_share_after(c)
    )


def _policies(entries: Sequence[Policy]) -> dict[str, Policy]:
    return {p.name: p for p in entries}


DEFAULT_POLICY: Final = "default"

POLICIES: Final[dict[str, Policy]] = _policies(
    [
        Policy("binpack", "fullest node and card first", _binpack, tight_cards_first=True),
        Policy("spread", "emptiest node and card first", _spread, tight_cards_first=False),
        Policy("bestfit", "least CPU and compute left on the node, tightest card", _bestfit, tight_cards_first=True),
        Policy("fgd", "fragmentation gradient descent as published", _fgd, tight_cards_first=True, uses_stats=True),
        Policy(
            DEFAULT_POLICY,
            "fragmentation gradient + CPU stranding + model pressure",
            _fgd_plus,
            tight_cards_first=True,
            uses_stats=True,
            shape_coverage=1.0,
        ),
    ]
)
ALIASES: Final = {"fgd+": DEFAULT_POLICY}


def policy(name: str) -> Policy:
    """The policy called ``name`` (or one of its aliases); a ValidationError listing the known names otherwise."""
    found = POLICIES.get(ALIASES.get(name, name))
    if found is None:
        known = ", ".join([*POLICIES, *ALIASES])
        raise ValidationError("policy", name, f"unknown placement policy (known: {known})")
    return found
