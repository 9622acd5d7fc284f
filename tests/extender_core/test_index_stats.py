"""The placement index learns the workload's shapes and places against them, as the openb benchmark does."""

from __future__ import annotations

from placement_kit import demand

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.cards import Card
from flexnpu.extender.core.placement import NodeFit, evaluate, fit_node, workload_stats
from flexnpu.extender.index import PlacementIndex
from flexnpu.extender.pods import PodKey
from flexnpu.extender.state import ClusterState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cluster() -> ClusterState:
    state = ClusterState()
    for n in range(3):
        state.set_node(f"n{n}", Inventory(cards=tuple(Card.of_model("910B3", i, f"n{n}-c{i}") for i in range(2))))
    # Different free units per node, so that the costs differ between nodes.
    state.reserve(PodKey("ns", "a", "uid-a"), "n0", [CardAssignment("n0-c0", 0, 3, 19660)])
    state.reserve(PodKey("ns", "b", "uid-b"), "n1", [CardAssignment("n1-c0", 0, 7, 45875)])
    return state


def test_the_index_places_against_the_shapes_it_has_seen() -> None:
    state, clock = cluster(), Clock()
    index = PlacementIndex(state, "default", min_pods=3, stats_refresh_s=60, clock=clock)
    seen = [demand(3), demand(3)]
    names = state.node_names()
    for i, d in enumerate(seen):
        index.observe(f"pod-{i}", d)
    index.filter(demand(3), names)
    assert index.stats is None  # fewer than min_pods: the uniform view
    seen += [demand(7), demand(10)]
    for i, d in enumerate(seen[2:], 2):
        index.observe(f"pod-{i}", d)
    index.filter(demand(3), names)
    first = index.stats
    assert first is not None and first.shapes == workload_stats(seen, 10, "default").shapes  # at once: young
    seen.append(demand(5))
    index.observe("pod-4", seen[-1])
    index.filter(demand(3), names)
    assert index.stats is first  # 5 pods: neither doubled since 4 nor past the interval

    clock.now = 61.0
    index.filter(demand(3), names)
    assert index.stats is not None and index.stats is not first
    expected = workload_stats(seen, 10, "default")
    assert index.stats.shapes == expected.shapes
    # Every verdict was re-made against the learned view: the best-scored nodes are the cheapest under it.
    costs = {}
    for name in names:
        node = state.node(name)
        assert node is not None
        fit = fit_node(demand(3), node)
        assert isinstance(fit, NodeFit)
        costs[name] = evaluate(demand(3), fit, "default", index.stats).cost
    best = min(costs.values())
    top = {n for n, score in index.scores(demand(3), names).items() if score == 10}
    assert top == {n for n, c in costs.items() if c == best}


def test_the_view_is_kept_when_nothing_new_was_seen() -> None:
    state, clock = cluster(), Clock()
    index = PlacementIndex(state, "default", min_pods=1, stats_refresh_s=10, clock=clock)
    index.observe("pod-0", demand(5))
    clock.now = 11.0
    index.filter(demand(5), state.node_names())
    first = index.stats
    index.observe("pod-0", demand(5))  # the same pod again: nothing new
    clock.now = 30.0
    index.filter(demand(5), state.node_names())
    assert index.stats is first


def test_a_young_history_is_learnt_again_each_time_it_doubles() -> None:
    state, clock = cluster(), Clock()
    index = PlacementIndex(state, "default", min_pods=2, stats_refresh_s=1e9, clock=clock)
    views = []
    for i in range(9):
        index.observe(f"pod-{i}", demand(1 + i % 9))
        index.filter(demand(3), state.node_names())
        views.append(index.stats)
    # Built at 2 pods, again at 4 and at 8; the clock never moved.
    changes = [i + 1 for i in range(1, 9) if views[i] is not views[i - 1]]
    assert views[0] is None
    assert changes == [2, 4, 8]
