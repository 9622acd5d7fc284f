"""Placement verdicts for every node, kept current incrementally, so a filter over 5,000 nodes stays cheap.

kube-scheduler sends every candidate node with every pod. Evaluating 5,000 nodes of 8 cards through the placement
core costs tens of milliseconds, but between two pods only the node of the last bind changes. So for each pod
*shape* (the demand without its priority, which does not change where it fits) and policy, this index keeps the
core's verdict (fit or refusal) and placement cost per node, and refreshes only the nodes the state's change log
names. A request then reduces to set lookups over the names it carries. The decisions themselves are the core's
(:func:`fit_node`, :func:`evaluate`): this module only remembers them.

The fragmentation-aware policy measures fragmentation against the cluster's typical pod shapes. The index learns
them from the pods it is asked about (the last ``history`` of them) and rebuilds the core's
:func:`workload_stats` at most every ``stats_refresh_s`` seconds; until it has seen ``min_pods`` pods it uses the
core's uniform view. A young history is the exception: the first view is built as soon as ``min_pods`` pods are
seen, and the next ones whenever the history has doubled since (100, 200, 400, ... pods), so a fresh extender facing
a burst of pods learns their shapes within the burst, not ``stats_refresh_s`` later.

A rebuild happens on the request path, so it is kept cheap, with the same decisions as a full re-evaluation:

- the history is kept as counts per shape (:func:`workload_shape`), so a new view costs O(shapes), not O(pods)
  (plus one count of the cluster's cards per model, which each model's pressure is measured against);
- fit verdicts do not depend on the view: a rebuild keeps every remembered refusal and only re-costs the nodes that
  fit (each shape on its next request);
- costs are shared between nodes in the same state: the core's verdict and cost depend on a node only through its
  :func:`placement_signature`, and most nodes of a cluster are in one of a few states (empty, one pod of a common
  size, ...), so re-costing 5,000 nodes evaluates a handful and looks the rest up.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Final

from flexnpu.extender.core.model import NodeState, PodDemand
from flexnpu.extender.core.placement import (
    EvaluationMemo,
    NodeFit,
    Refusal,
    RefusalKind,
    evaluate,
    fit_node,
    placement_signature,
    scale_score,
    workload_shape,
    workload_stats_of_counts,
)
from flexnpu.extender.core.stats import ClusterStats, Shape, model_cards
from flexnpu.extender.state import ClusterState
from flexnpu.priority import Priority

# Refusals that evicting pods cannot cure: kube-scheduler skips these nodes when it looks for preemption.
UNRESOLVABLE: Final = frozenset(
    {RefusalKind.REQUEST, RefusalKind.NO_CARDS, RefusalKind.TOO_FEW_CARDS, RefusalKind.MODEL, RefusalKind.UNHEALTHY}
)
DEFAULT_MAX_SHAPES: Final = 256
DEFAULT_STATS_REFRESH_S: Final = 600.0
DEFAULT_HISTORY: Final = 5000
DEFAULT_MIN_PODS: Final = 100
# Bounds of the cost table shared between nodes: (shape, node state) entries, and distinct node states seen.
_MAX_SHARED_COSTS: Final = 500_000
_MAX_SIGNATURES: Final = 100_000
_REFUSED: Final = None  # the shared table's entry for a (shape, node state) that does not fit


def no_inventory_reason(node: str) -> str:
    return f"node {node}: has no flexnpu cards (no readable flexnpu.io/inventory annotation)"


@dataclass
class _Verdicts:
    """One shape's view of the cluster as of state sequence ``seen``."""

    seen: int = -1
    stats: ClusterStats | None = None  # the view its costs were made against
    costs: dict[str, float] = field(default_factory=dict)  # fitting nodes
    by_cost: dict[float, set[str]] = field(default_factory=dict)  # the same, grouped: few distinct costs
    by_signature: dict[int, set[str]] = field(default_factory=dict)  # the same, grouped by node state
    signatures: dict[str, int] = field(default_factory=dict)  # fitting node -> its state's signature id
    refusals: dict[str, Refusal] = field(default_factory=dict)  # the others
    failed: dict[str, str] = field(default_factory=dict)  # their reasons, as filter answers them
    unresolvable: dict[str, str] = field(default_factory=dict)

    def forget(self, name: str) -> None:
        cost = self.costs.pop(name, None)
        if cost is not None:
            bucket = self.by_cost[cost]
            bucket.discard(name)
            if not bucket:
                del self.by_cost[cost]
            signature = self.signatures.pop(name)
            group = self.by_signature[signature]
            group.discard(name)
            if not group:
                del self.by_signature[signature]
        if self.refusals.pop(name, None) is not None:
            self.failed.pop(name, None)
            self.unresolvable.pop(name, None)

    def fits(self, name: str, cost: float, signature: int) -> None:
        self.costs[name] = cost
        self.by_cost.setdefault(cost, set()).add(name)
        self.signatures[name] = signature
        self.by_signature.setdefault(signature, set()).add(name)

    def recost(self, cost_of: Callable[[int], float]) -> None:
        """Every fitting node's cost again (a new view), per node state: ``cost_of(signature id)``."""
        self.costs.clear()
        self.by_cost.clear()
        for signature, names in self.by_signature.items():
            cost = cost_of(signature)
            self.costs.update(dict.fromkeys(names, cost))
            self.by_cost.setdefault(cost, set()).update(names)

    def refuse(self, name: str, refusal: Refusal) -> None:
        self.refusals[name] = refusal
        (self.unresolvable if refusal.kind in UNRESOLVABLE else self.failed)[name] = refusal.reason

    def clear(self) -> None:
        for part in (
            self.costs,
            self.by_cost,
            self.by_signature,
            self.signatures,
            self.refusals,
            self.failed,
            self.unresolvable,
        ):
            part.clear()


@dataclass(frozen=True)
class FilterVerdict:
    fits: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    refusals: list[Refusal]


class PlacementIndex:
    """Verdicts per (shape, policy) over a :class:`ClusterState`; not thread-safe (the event loop owns it)."""

    def __init__(
        self,
        state: ClusterState,
        policy: str,
        *,
        units_per_card: int = 10,
        max_shapes: int = DEFAULT_MAX_SHAPES,
        stats_refresh_s: float = DEFAULT_STATS_REFRESH_S,
        history: int = DEFAULT_HISTORY,
        min_pods: int = DEFAULT_MIN_PODS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.policy = policy
        self.memo = EvaluationMemo()
        self.stats: ClusterStats | None = None  # None: the core's uniform view
        self._units_per_card = units_per_card
        self._max_shapes = max_shapes
        self._stats_refresh_s = stats_refresh_s
        self._history_size = history
        self._min_pods = min_pods
        self._clock = clock
        self._history: OrderedDict[str, PodDemand] = OrderedDict()  # pod uid -> demand, newest last
        self._shape_counts: Counter[Shape] = Counter()  # the history, counted per workload shape
        self._history_changed = False
        self._stats_at = clock()
        self._stats_pods = 0  # history size the current view was built from
        self._shapes: OrderedDict[PodDemand, _Verdicts] = OrderedDict()
        # The last filter's answer: kube-scheduler's prioritize usually names exactly those nodes.
        # (verdicts, their sequence then, the nodes answered, whether those were every fitting node then)
        self._last_fits: tuple[_Verdicts, int, list[str], bool] | None = None
        # Every node's name and the membership they were read at: a request naming every node (the usual case) is
        # recognised against them.
        self._every_node: tuple[frozenset[str], int] | None = None
        # Costs shared between nodes in the same state, for the current view: (shape, signature id) -> cost, or
        # _REFUSED. Signature ids intern placement_signature(node) per node object (hashing it each time is slow).
        self._shared_costs: dict[tuple[PodDemand, int], float | None] = {}
        self._signature_of: dict[str, tuple[NodeState, int]] = {}
        self._signature_ids: dict[Hashable, int] = {}
        self._signature_nodes: list[NodeState] = []  # by signature id: a node in that state

    def observe(self, uid: str, demand: PodDemand) -> None:
        """A pod the scheduler asks about: part of the workload the stats describe."""
        if uid in self._history:
            self._history.move_to_end(uid)
            return
        self._history[uid] = demand
        self._shape_counts[workload_shape(demand, self._units_per_card)] += 1
        self._history_changed = True
        if len(self._history) > self._history_size:
            _, oldest = self._history.popitem(last=False)
            self._shape_counts[workload_shape(oldest, self._units_per_card)] -= 1

    def filter(self, demand: PodDemand, names: list[str]) -> FilterVerdict:
        verdicts = self._current(demand)
        costs, refusals = verdicts.costs, verdicts.refusals
        if self._names_every_node(names):
            # The verdicts already are the answer: copy them (C-level), no per-node work.
            fits = list(costs)
            self._last_fits = (verdicts, verdicts.seen, fits, True)
            return FilterVerdict(
                fits, dict(verdicts.failed), dict(verdicts.unresolvable), [] if fits else list(refusals.values())
            )
        fits = [n for n in names if n in costs]
        self._last_fits = (verdicts, verdicts.seen, fits, len(fits) == len(costs))
        if len(fits) == len(names):
            return FilterVerdict(fits, {}, {}, [])
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        refused: list[Refusal] = []
        for name in names:
            if name in costs:
                continue
            refusal = refusals.get(name)
            if refusal is None:
                unresolvable[name] = no_inventory_reason(name)
                continue
            refused.append(refusal)
            (unresolvable if refusal.kind in UNRESOLVABLE else failed)[name] = refusal.reason
        return FilterVerdict(fits, failed, unresolvable, refused)

    def best_of(self, demand: PodDemand, fits: list[str]) -> list[str]:
        """The nodes of ``fits`` (the fitting nodes :meth:`filter` just answered) whose placement is cheapest,
        the ones :meth:`score_groups` gives ``MAX_SCORE``: all of ``fits`` when they tie, else sorted by name."""
        if not fits:
            return fits
        verdicts = self._current(demand)
        last = self._last_fits
        if last is not None and last[0] is verdicts and last[2] is fits and last[3]:
            group = verdicts.by_cost[min(verdicts.by_cost)]  # fits are every fitting node: no per-node work
        else:
            costs = verdicts.costs
            best = min(costs[n] for n in fits)
            group = {n for n in fits if costs[n] == best}
        if len(group) == len(fits):
            return fits
        best_nodes = sorted(group)
        self._last_fits = (verdicts, verdicts.seen, best_nodes, False)
        return best_nodes

    def _names_every_node(self, names: list[str]) -> bool:
        """Whether ``names`` are exactly the cluster's nodes: one set of them (hashed in C) against the state's,
        kept until a node appears or goes. kube-scheduler's order differs pod to pod (its filters run in parallel,
        from where the last search ended), so no list comparison recognises it; and it must be exact, since
        kube-scheduler fails the whole filter when an answer names a node it did not send."""
        membership = self.state.membership
        every = self._every_node
        if every is None or every[1] != membership:
            every = self._every_node = (frozenset(self.state.node_names()), membership)
        return len(names) == len(every[0]) and every[0] == set(names)

    def scores(self, demand: PodDemand, names: list[str]) -> dict[str, int]:
        """0..10 per fitting node among ``names`` (the cheapest get 10), as :func:`score_nodes` scales them."""
        return {name: score for score, group in self.score_groups(demand, names) for name in group}

    def score_groups(self, demand: PodDemand, names: list[str]) -> list[tuple[int, list[str]]]:
        """:meth:`scores` grouped by score, without the zeros: ``[(score, node names), ...]``.

        Nodes share few distinct costs (most are in one of a handful of states), so this is one set intersection
        per distinct cost, in C, rather than Python work per node: the answer for 5,000 nodes stays well under a
        millisecond.
        """
        verdicts = self._current(demand)
        present = self._groups_of_last_filter(verdicts, names)
        if present is None:
            wanted = set(names)
            present = [(cost, hits) for cost, group in verdicts.by_cost.items() if (hits := group & wanted)]
        if not present:
            return []
        best, worst = min(c for c, _ in present), max(c for c, _ in present)
        groups: dict[int, list[str]] = {}
        for cost, hits in present:
            score = scale_score(cost, best, worst)
            if score:
                groups.setdefault(score, []).extend(hits)
        return sorted(groups.items(), reverse=True)

    def _groups_of_last_filter(self, verdicts: _Verdicts, names: list[str]) -> list[tuple[float, set[str]]] | None:
        """The cost groups restricted to ``names`` without per-node work, when ``names`` is the last filter's
        answer for this shape and that answer held every node that fitted then (the usual prioritize). Nodes that
        stopped fitting since are gone from the groups already; nodes that started to fit since (they are among
        the state's changes) are taken out. None: not that case."""
        last = self._last_fits
        if last is None:
            return None
        last_verdicts, seen, fits, complete = last
        if last_verdicts is not verdicts or not complete or len(names) != len(fits) or names != fits:
            return None
        if seen == verdicts.seen:
            return list(verdicts.by_cost.items())
        changed = self.state.changed_since(seen)
        if changed is None:
            return None
        answered = set(fits)
        newcomers = {n for n in changed if n in verdicts.costs and n not in answered}
        if not newcomers:
            return list(verdicts.by_cost.items())
        return [(cost, rest) for cost, group in verdicts.by_cost.items() if (rest := group - newcomers)]

    def _refresh_stats(self) -> None:
        now = self._clock()
        seen = len(self._history)
        if not self._history_changed or seen < self._min_pods:
            return
        young = self.stats is None or seen >= 2 * self._stats_pods
        if not young and now - self._stats_at < self._stats_refresh_s:
            return
        cards = model_cards(self.state.nodes().values())  # the capacity each model's pressure is measured against
        self.stats = workload_stats_of_counts(self._shape_counts, self._units_per_card, self.policy, cards)
        self._stats_at, self._stats_pods, self._history_changed = now, seen, False
        # Every cost was made against the old view; each shape re-costs its fitting nodes on its next request.
        self._shared_costs.clear()
        self.memo.clear()

    def _current(self, demand: PodDemand) -> _Verdicts:
        self._refresh_stats()
        if len(self._signature_ids) >= _MAX_SIGNATURES:
            # Forget the node states seen so far; the verdicts grouped by their ids go with them.
            for part in (self._signature_ids, self._signature_of, self._signature_nodes, self._shared_costs):
                part.clear()
            self._shapes.clear()
            self._last_fits = None
        shape = replace(demand, priority=Priority.NORMAL)
        verdicts = self._shapes.get(shape)
        if verdicts is None:
            verdicts = self._shapes[shape] = _Verdicts()
            if len(self._shapes) > self._max_shapes:
                self._shapes.popitem(last=False)
                self.memo.clear()  # the core's memo would otherwise keep every shape ever seen
        else:
            self._shapes.move_to_end(shape)
        sequence = self.state.sequence
        if verdicts.seen == sequence and verdicts.stats is self.stats:
            return verdicts
        changed = self.state.changed_since(verdicts.seen) if verdicts.seen >= 0 else None
        if changed is None:
            verdicts.clear()
            changed = set(self.state.node_names())
        if verdicts.stats is not self.stats:
            # A new view: fits stand, costs do not. Nodes changed since are judged again below.
            verdicts.recost(lambda signature: self._fitting_cost(shape, signature))
            verdicts.stats = self.stats
        for name in changed:
            self._judge(shape, name, self.state.node(name), verdicts)
        verdicts.seen = sequence
        return verdicts

    def _judge(self, shape: PodDemand, name: str, node: NodeState | None, verdicts: _Verdicts) -> None:
        verdicts.forget(name)
        if node is None:
            return
        signature = self._signature_id(name, node)
        key = (shape, signature)
        shared = self._shared_costs
        if key in shared:
            cost = shared[key]
            verdict: NodeFit | Refusal | None = None if cost is not _REFUSED else fit_node(shape, node)
        else:
            verdict = fit_node(shape, node)
            cost = self._share(key, verdict)
        if isinstance(verdict, Refusal):
            verdicts.refuse(name, verdict)  # its reason names this node and its cards: not shared
        else:
            assert cost is not None
            verdicts.fits(name, cost, signature)

    def _fitting_cost(self, shape: PodDemand, signature: int) -> float:
        """The cost of ``shape`` on nodes in the state ``signature``, which it fits."""
        key = (shape, signature)
        cost = self._shared_costs[key] if key in self._shared_costs else self._share(key, None)
        assert cost is not None
        return cost

    def _share(self, key: tuple[PodDemand, int], verdict: NodeFit | Refusal | None) -> float | None:
        """Evaluate ``key``'s shape on a node in ``key``'s state (``verdict``: its fit, when already made)."""
        shape, signature = key
        if verdict is None:
            verdict = fit_node(shape, self._signature_nodes[signature])
        if len(self._shared_costs) >= _MAX_SHARED_COSTS:
            self._shared_costs.clear()
        cost = None
        if isinstance(verdict, NodeFit):
            cost = evaluate(shape, verdict, self.policy, self.stats, memo=self.memo).cost
        self._shared_costs[key] = cost
        return cost

    def _signature_id(self, name: str, node: NodeState) -> int:
        known = self._signature_of.get(name)
        if known is not None and known[0] is node:
            return known[1]
        signature = placement_signature(node)
        number = self._signature_ids.get(signature)
        if number is None:
            number = self._signature_ids[signature] = len(self._signature_nodes)
            self._signature_nodes.append(node)
        self._signature_of[name] = (node, number)
        return number
