"""The extender's placement decisions as pure functions: filter, prioritize and the card choice at bind.

The extender's HTTP handlers translate kube-scheduler's requests and call, per pod:

1. :func:`filter_nodes` (``filter``): which nodes fit, and for every other one a reason string for
   ``FailedNodes``;
2. :func:`score_nodes` (``prioritize``): a 0..10 score per fitting node under a policy; only the node(s) whose
   placement is cheapest get 10, every other one at most ``RUNNER_UP_MAX`` (7), so kube-scheduler's choice is
   always one of the policy's best: it adds the extender's score times its weight times 10 (MaxNodeScore /
   MaxExtenderPriority) to its default plugins' scores, which together span 200 (NodeResourcesFit and
   BalancedAllocation, 0..100 each, weight 1); a gap of 3 points at the chart's weight 10 is 300. By default
   (``best_nodes_only``) the service's filter already passes only the nodes scored 10, so the choice is one of
   the policy's best whatever other plugins add, and kube-scheduler scores a few nodes rather than thousands;
3. :func:`choose` (``bind``): which card(s) of the chosen node: a fraction of one card, or k whole cards on one
   node, on one HCCS ring when a ring has room; memory per card by ``flexnpu.units.default_memory_mib``.

Fragmentation-aware policies measure against the workload's typical shapes: build them once from the pods seen
with :func:`workload_stats` (cut as the policy wants) and pass the same object while the workload view holds;
without stats a uniform view is assumed.

All three accept an optional :class:`EvaluationMemo`. Node states are frozen, so a memo remembers each
evaluation against the node *object* it was made for, and a caller that replaces a node's state when it changes
(as the watch cache and the openb benchmark do) re-evaluates only the nodes that changed. Results are the same
with or without it. A memo keys on the demand, the policy and the stats object: call ``clear()`` when the
stats are replaced, or use a fresh memo.

Public names (stable): :func:`fit_node`, :func:`filter_nodes`, :func:`score_nodes`, :func:`choose`,
:func:`evaluate`, :class:`NodeFit`, :class:`Refusal`, :class:`RefusalKind`, :class:`Placement`,
:class:`PlacementError`, :class:`EvaluationMemo`, :data:`POLICIES`, :func:`policy`, :data:`DEFAULT_POLICY`,
:data:`MAX_SCORE`, :data:`RUNNER_UP_MAX`, :func:`scale_score`, :func:`workload_stats`, :func:`workload_shape`,
:func:`workload_stats_of_counts`, :func:`placement_signature`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from flexnpu.annotations import CardAssignment
from flexnpu.cards import hccs_ring
from flexnpu.errors import FlexnpuError
from flexnpu.extender.core.fit import NodeFit, Refusal, RefusalKind, fit_node
from flexnpu.extender.core.fragmentation import NodeProfile, node_profile
from flexnpu.extender.core.model import NodeState, PodDemand
from flexnpu.extender.core.policies import DEFAULT_POLICY, POLICIES, Candidate, Policy, policy
from flexnpu.extender.core.stats import (
    ClusterStats,
    Shape,
    cluster_stats,
    cluster_stats_of_counts,
    demand_shape,
    uniform_stats,
)

__all__ = [
    "DEFAULT_POLICY", "MAX_SCORE", "POLICIES", "RUNNER_UP_MAX", "EvaluationMemo", "NodeFit", "Placement",
    "PlacementError", "Refusal", "RefusalKind", "choose", "evaluate", "filter_nodes", "fit_node",
    "placement_signature", "policy", "scale_score", "score_nodes", "workload_shape", "workload_stats",
    "workload_stats_of_counts",
]  # fmt: skip

MAX_SCORE: Final = 10
RUNNER_UP_MAX: Final = 7  # the highest score of a node that is not among the cheapest (see the module docstring)

# Profiles a node for some stats: the memo's cached one or the plain function.
_ProfileFn = Callable[[NodeState, ClusterStats], NodeProfile]


class PlacementError(FlexnpuError):
    """The pod cannot be placed on the node it was bound to; the message is the refusal's reason."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(refusal.reason)


@dataclass(frozen=True)
class Placement:
    """The cheapest way to put the pod on one node under a policy: card positions and their cost."""

    node: str
    positions: tuple[int, ...]
    cost: float


class EvaluationMemo:
    """Remembers fits, placements and fragmentation profiles per node object (see the module docstring)."""

    def __init__(self) -> None:
        self._fits: dict[PodDemand, dict[str, tuple[NodeState, NodeFit | Refusal]]] = {}
        self._placements: dict[tuple[PodDemand, str, ClusterStats], dict[str, tuple[NodeState, Placement]]] = {}
        self._profiles: dict[ClusterStats, dict[str, tuple[NodeState, NodeProfile]]] = {}

    def clear(self) -> None:
        self._fits.clear()
        self._placements.clear()
        self._profiles.clear()

    def fits(self, demand: PodDemand, nodes: Iterable[NodeState]) -> list[NodeFit | Refusal]:
        table = self._fits.get(demand)
        if table is None:
            table = self._fits[demand] = {}
        out: list[NodeFit | Refusal] = []
        for node in nodes:
            entry = table.get(node.name)
            if entry is None or entry[0] is not node:
                entry = table[node.name] = (node, fit_node(demand, node))
            out.append(entry[1])
        return out

    def placements(
        self, demand: PodDemand, fits: Iterable[NodeFit], chosen: Policy, stats: ClusterStats
    ) -> list[Placement]:
        key = (demand, chosen.name, stats)
        table = self._placements.get(key)
        if table is None:
            table = self._placements[key] = {}
        out: list[Placement] = []
        for fit in fits:
            node = fit.node
            entry = table.get(node.name)
            if entry is None or entry[0] is not node:
                entry = table[node.name] = (node, _evaluate(demand, fit, chosen, stats, self.profile))
            out.append(entry[1])
        return out

    def profile(self, node: NodeState, stats: ClusterStats) -> NodeProfile:
        table = self._profiles.setdefault(stats, {})
        entry = table.get(node.name)
        if entry is None or entry[0] is not node:
            entry = (node, node_profile(node, stats))
            table[node.name] = entry
        return entry[1]


def filter_nodes(
    demand: PodDemand, nodes: Iterable[NodeState], memo: EvaluationMemo | None = None
) -> tuple[list[NodeFit], dict[str, str]]:
    """The nodes that can take the pod, and for each other node why not (node name -> reason)."""
    fits: list[NodeFit] = []
    failed: dict[str, str] = {}
    verdicts = memo.fits(demand, nodes) if memo is not None else [fit_node(demand, node) for node in nodes]
    for verdict in verdicts:
        if isinstance(verdict, NodeFit):
            fits.append(verdict)
        else:
            failed[verdict.node] = verdict.reason
    return fits, failed


def evaluate(
    demand: PodDemand,
    fit: NodeFit,
    chosen: Policy | str = DEFAULT_POLICY,
    stats: ClusterStats | None = None,
    memo: EvaluationMemo | None = None,
) -> Placement:
    """The cheapest placement of the pod on the fitting node under a policy."""
    return _placements(demand, [fit], chosen, stats, memo)[0]


def score_nodes(
    demand: PodDemand,
    fits: Iterable[NodeFit],
    chosen: Policy | str = DEFAULT_POLICY,
    cluster_stats: ClusterStats | None = None,
    memo: EvaluationMemo | None = None,
) -> dict[str, int]:
    """0..10 per fitting node: 10 for the cheapest placement(s), the others scaled down by their cost."""
    costs = {p.node: p.cost for p in _placements(demand, fits, chosen, cluster_stats, memo)}
    if not costs:
        return {}
    best, worst = min(costs.values()), max(costs.values())
    return {name: scale_score(cost, best, worst) for name, cost in costs.items()}


def choose(
    demand: PodDemand,
    node: NodeState,
    chosen: Policy | str = DEFAULT_POLICY,
    cluster_stats: ClusterStats | None = None,
    memo: EvaluationMemo | None = None,
) -> tuple[CardAssignment, ...]:
    """The card(s) the pod gets on ``node``; PlacementError (with the refusal) when it does not fit there."""
    verdict = memo.fits(demand, [node])[0] if memo is not None else fit_node(demand, node)
    if isinstance(verdict, Refusal):
        raise PlacementError(verdict)
    placement = evaluate(demand, verdict, chosen, cluster_stats, memo)
    cards = node.cards
    return tuple(
        CardAssignment(
            uuid=cards[p].uuid,
            index=cards[p].index,
            units=verdict.units,
            memory_mib=demand.memory_mib(cards[p], node.units_per_card),
        )
        for p in placement.positions
    )


def workload_stats(
    demands: Iterable[PodDemand],
    units_per_card: int,
    chosen: Policy | str = DEFAULT_POLICY,
    cards_per_model: Mapping[str, int] | None = None,
) -> ClusterStats:
    """The typical shapes of the pods seen (one demand per pod, CPU-only ones included), as the policy cuts them,
    and the pressure on each card model of ``cards_per_model`` (the cluster's cards per model,
    :func:`flexnpu.extender.core.stats.model_cards`)."""
    shapes = [demand_shape(d, units_per_card) for d in demands]
    return cluster_stats(shapes, units_per_card, _policy(chosen).shape_coverage, cards_per_model)


def workload_shape(demand: PodDemand, units_per_card: int) -> Shape:
    """The shape one pod adds to the workload view (weight 1): what :func:`workload_stats_of_counts` counts."""
    return demand_shape(demand, units_per_card)


def workload_stats_of_counts(
    counts: Mapping[Shape, int],
    units_per_card: int,
    chosen: Policy | str = DEFAULT_POLICY,
    cards_per_model: Mapping[str, int] | None = None,
) -> ClusterStats:
    """:func:`workload_stats` from pods counted per :func:`workload_shape`: the same view, built in O(shapes)."""
    return cluster_stats_of_counts(counts, units_per_card, _policy(chosen).shape_coverage, cards_per_model)


def placement_signature(node: NodeState) -> Hashable:
    """Everything about ``node`` that :func:`fit_node` (whether it fits, on which positions) and :func:`evaluate`
    (cost and positions) depend on: two nodes with equal signatures get the same verdicts and costs for every
    demand, policy and stats. Names and card uuids are left out (they only label the answer; a refusal's reason
    names them, so only fits and costs may be shared between nodes)."""
    cards = tuple(
        (c.index, c.model, c.units_total, c.units_used, c.memory_total_mib, c.memory_used_mib, c.healthy)
        for c in node.cards
    )
    return (
        cards,
        node.units_per_card,
        node.cpu_milli_total,
        node.cpu_milli_used,
        node.host_memory_mib_total,
        node.host_memory_mib_used,
    )


def _placements(
    demand: PodDemand,
    fits: Iterable[NodeFit],
    chosen: Policy | str,
    stats: ClusterStats | None,
    memo: EvaluationMemo | None,
) -> list[Placement]:
    chosen = _policy(chosen)
    fits = list(fits)
    if stats is None:
        stats = _uniform(fits[0].node.units_per_card if fits else 1)
    if memo is not None:
        return memo.placements(demand, fits, chosen, stats)
    return [_evaluate(demand, fit, chosen, stats, node_profile) for fit in fits]


def scale_score(cost: float, best: float, worst: float) -> int:
    """10 for the cheapest cost, the others 0..``RUNNER_UP_MAX`` by their distance from the worst."""
    if cost <= best:
        return MAX_SCORE
    return min(RUNNER_UP_MAX, int((RUNNER_UP_MAX + 1) * (worst - cost) / (worst - best)))


def _policy(chosen: Policy | str) -> Policy:
    return chosen if isinstance(chosen, Policy) else policy(chosen)


_UNIFORM: dict[int, ClusterStats] = {}


def _uniform(units_per_card: int) -> ClusterStats:
    # One object per U, so that memoised evaluations without explicit stats stay valid between calls.
    stats = _UNIFORM.get(units_per_card)
    if stats is None:
        stats = _UNIFORM.setdefault(units_per_card, uniform_stats(units_per_card))
    return stats


def _evaluate(
    demand: PodDemand, fit: NodeFit, chosen: Policy, stats: ClusterStats, profile_of: _ProfileFn
) -> Placement:
    def node_profile_of(node: NodeState) -> NodeProfile:
        return profile_of(node, stats)

    # Among equally cheap candidates: the policy's card order, then the one leaving fewest fitting cards on the
    # rings it touches (so whole rings stay whole for later multi-card pods), then the lowest indices.
    best: tuple[float, tuple[tuple[int, int], ...], int, tuple[int, ...]] | None = None
    cards = fit.node.cards
    for positions in _candidates(fit, chosen):
        cost = chosen.cost(Candidate(demand, fit, positions, stats, node_profile_of))
        key = (
            cost,
            tuple(chosen.card_order(cards[p])[:2] for p in positions),
            _ring_leftover(fit, positions),
            positions,
        )
        if best is None or key < best:
            best = key
    assert best is not None  # a NodeFit has at least cards_needed fitting positions
    return Placement(node=fit.name, positions=best[3], cost=best[0])


def _ring_leftover(fit: NodeFit, positions: tuple[int, ...]) -> int:
    cards = fit.node.cards
    rings = {hccs_ring(cards[p].index) for p in positions}
    return sum(1 for p in fit.positions if p not in positions and hccs_ring(cards[p].index) in rings)


def _candidates(fit: NodeFit, chosen: Policy) -> list[tuple[int, ...]]:
    """Card sets worth pricing: each distinct fitting card for a fraction; k cards per HCCS ring for whole ones."""
    cards = fit.node.cards
    ordered = sorted(fit.positions, key=lambda p: chosen.card_order(cards[p]))
    if fit.cards_needed == 0:
        return [()]
    if fit.cards_needed == 1:
        seen: set[tuple[str, int, int, int]] = set()
        out: list[tuple[int, ...]] = []
        for p in ordered:
            card = cards[p]
            signature = (card.model, card.units_free, card.memory_free_mib, card.memory_total_mib)
            if signature not in seen:
                seen.add(signature)
                out.append((p,))
        return out
    rings: dict[int, list[int]] = {}
    for p in ordered:
        rings.setdefault(hccs_ring(cards[p].index), []).append(p)
    on_one_ring = [tuple(ring[: fit.cards_needed]) for ring in rings.values() if len(ring) >= fit.cards_needed]
    return on_one_ring or [tuple(ordered[: fit.cards_needed])]
