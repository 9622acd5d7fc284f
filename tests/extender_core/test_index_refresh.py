"""A new workload view is applied incrementally (fits kept, costs shared between nodes in one state), and the
index then answers exactly what a full re-evaluation through the core answers."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from placement_kit import card, demand, node

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.cards import Card
from flexnpu.extender.core.model import PodDemand
from flexnpu.extender.core.placement import (
    NodeFit,
    evaluate,
    filter_nodes,
    fit_node,
    placement_signature,
    score_nodes,
    workload_shape,
    workload_stats,
    workload_stats_of_counts,
)
from flexnpu.extender.core.stats import ClusterStats
from flexnpu.extender.index import PlacementIndex
from flexnpu.extender.pods import PodKey
from flexnpu.extender.state import ClusterState

HBM = 65536
SHAPES = (1, 2, 3, 5, 7, 10, 20, 40)


def varied_cluster(rng: random.Random, nodes: int = 40) -> ClusterState:
    """Nodes of 4 cards: many alike (empty, or one card a third used), the rest each in a state of its own."""
    state = ClusterState()
    for n in range(nodes):
        name = f"n{n:02d}"
        state.set_node(name, Inventory(cards=tuple(Card.of_model("910B3", i, f"{name}-c{i}") for i in range(4))))
        if n % 3 == 1:
            take(state, name, 0, 3, f"alike-{n}")
        elif n % 3 == 2:
            for c in range(4):
                units = rng.randint(0, 10)
                if units:
                    take(state, name, c, units, f"own-{n}-{c}")
    return state


def take(state: ClusterState, node_name: str, card_index: int, units: int, uid: str) -> None:
    assignment = CardAssignment(f"{node_name}-c{card_index}", card_index, units, units * HBM // 10)
    state.reserve(PodKey("ns", uid, uid), node_name, [assignment])


def full_rebuild(
    state: ClusterState, shape: PodDemand, index: PlacementIndex
) -> tuple[set[str], dict[str, str], dict[str, int]]:
    """Fits, refusal reasons and non-zero scores straight from the core, against the index's current view."""
    nodes = list(state.nodes().values())
    fits, failed = filter_nodes(shape, nodes)
    scores = score_nodes(shape, fits, "default", index.stats)
    return {f.name for f in fits}, failed, {n: s for n, s in scores.items() if s}


def index_answer(
    index: PlacementIndex, shape: PodDemand, names: list[str]
) -> tuple[set[str], dict[str, str], dict[str, int]]:
    verdict = index.filter(shape, names)
    return set(verdict.fits), {**verdict.failed, **verdict.unresolvable}, index.scores(shape, verdict.fits)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_new_view_gives_the_answers_of_a_full_rebuild(seed: int) -> None:
    rng = random.Random(seed)
    state = varied_cluster(rng)
    index = PlacementIndex(state, "default", min_pods=4, stats_refresh_s=1e9)
    names = state.node_names()
    views: list[ClusterStats | None] = []
    for i in range(40):
        units = rng.choice(SHAPES)
        index.observe(f"pod-{i}", demand(units, cpu_milli=rng.choice((0, 4000))))
        for shape_units in SHAPES:  # every shape, so that most are re-costed, not built anew
            assert index_answer(index, demand(shape_units), names) == full_rebuild(state, demand(shape_units), index)
        if index.stats is not (views[-1] if views else None):
            views.append(index.stats)
        movable = [n for n in names if fits_card3(state, n)]
        if i % 5 == 4 and movable:  # the cluster moves between views too
            take(state, rng.choice(movable), 3, 2, f"later-{i}")
    assert len(views) >= 3  # built at 4 pods, then at 8, 16, 32: each one applied incrementally


def fits_card3(state: ClusterState, name: str) -> bool:
    node_state = state.node(name)
    return node_state is not None and node_state.cards[3].units_free >= 2


def test_the_counted_history_gives_the_view_of_the_pods_themselves() -> None:
    rng = random.Random(7)
    state = varied_cluster(rng, nodes=3)
    index = PlacementIndex(state, "default", min_pods=1, history=25, stats_refresh_s=0)
    seen: list[PodDemand] = []
    for i in range(60):  # past the history's size: the oldest pods leave the counts
        seen.append(demand(rng.choice(SHAPES), cpu_milli=rng.choice((0, 2000, 8000))))
        index.observe(f"pod-{i}", seen[-1])
        index.filter(demand(1), state.node_names())
        expected = workload_stats(seen[-25:], 10, "default")
        assert index.stats is not None
        assert (index.stats.shapes, index.stats.cpu_per_unit) == (expected.shapes, expected.cpu_per_unit)


def test_counts_and_pods_give_the_same_view_for_every_policy() -> None:
    rng = random.Random(3)
    pods = [demand(rng.choice(SHAPES), cpu_milli=rng.choice((0, 1000))) for _ in range(200)]
    counts = Counter(workload_shape(d, 10) for d in pods)
    for policy in ("default", "fgd", "binpack"):
        by_pods, by_counts = workload_stats(pods, 10, policy), workload_stats_of_counts(counts, 10, policy)
        assert (by_pods.shapes, by_pods.cpu_per_unit) == (by_counts.shapes, by_counts.cpu_per_unit)


def test_nodes_with_one_signature_get_one_verdict_and_cost() -> None:
    rng = random.Random(5)
    stats = workload_stats([demand(u) for u in SHAPES], 10, "default")
    for _ in range(50):
        used = [rng.randint(0, 10) for _ in range(4)]
        a = node("a", *(card(i, used=u) for i, u in enumerate(used)), cpu_total=64000, cpu_used=8000)
        b_cards = (replace(card(i, used=u), uuid=f"other-{i}") for i, u in enumerate(used))
        b = node("b", *b_cards, cpu_total=64000, cpu_used=8000)
        assert placement_signature(a) == placement_signature(b)
        for units in SHAPES:
            fit_a, fit_b = fit_node(demand(units), a), fit_node(demand(units), b)
            assert isinstance(fit_a, NodeFit) == isinstance(fit_b, NodeFit)
            if isinstance(fit_a, NodeFit) and isinstance(fit_b, NodeFit):
                placed_a = evaluate(demand(units), fit_a, "default", stats)
                placed_b = evaluate(demand(units), fit_b, "default", stats)
                assert (placed_a.cost, placed_a.positions) == (placed_b.cost, placed_b.positions)


def test_a_node_in_another_state_gets_another_signature() -> None:
    base = node("a", card(0), card(1))
    assert placement_signature(base) != placement_signature(node("a", card(0, used=1), card(1)))
    assert placement_signature(base) != placement_signature(node("a", card(0), card(1), cpu_total=1000))
    assert placement_signature(base) != placement_signature(node("a", card(0), card(1, healthy=False)))
