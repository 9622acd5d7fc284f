"""The index's shortcuts give the answers of the plain computation: every node named, prioritize after filter."""

from __future__ import annotations

import json
import random

from placement_kit import demand

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.cards import Card
from flexnpu.extender.index import PlacementIndex
from flexnpu.extender.pods import PodKey
from flexnpu.extender.state import ClusterState

HBM = 65536


def cluster(nodes: int = 12) -> ClusterState:
    state = ClusterState()
    for n in range(nodes):
        state.set_node(f"n{n:02d}", Inventory(cards=tuple(Card.of_model("910B3", i, f"n{n}-c{i}") for i in range(2))))
    return state


def take(state: ClusterState, node: str, card: int, units: int, uid: str) -> None:
    state.reserve(
        PodKey("ns", uid, uid), node, [CardAssignment(f"n{int(node[1:])}-c{card}", card, units, units * HBM // 10)]
    )


def plain_filter(index: PlacementIndex, units: int, names: list[str]) -> tuple[set[str], dict[str, str]]:
    """The answer for the same nodes named in another order and one at a time (no shortcut applies)."""
    fits: set[str] = set()
    reasons: dict[str, str] = {}
    for name in names:
        verdict = index.filter(demand(units), [name])
        fits.update(verdict.fits)
        reasons.update(verdict.failed)
        reasons.update(verdict.unresolvable)
    return fits, reasons


def test_naming_every_node_answers_like_naming_them_one_by_one() -> None:
    state = cluster()
    take(state, "n00", 0, 10, "a")
    take(state, "n00", 1, 10, "b")  # n00 full
    take(state, "n01", 0, 7, "c")
    index = PlacementIndex(state, "default")
    every = state.node_names()
    for units in (3, 10, 20):
        verdict = index.filter(demand(units), list(every))
        again = index.filter(demand(units), list(every))  # recognised by list equality this time
        fits, reasons = plain_filter(index, units, every)
        for answer in (verdict, again):
            assert set(answer.fits) == fits
            assert {**answer.failed, **answer.unresolvable} == reasons
    assert "n00" not in index.filter(demand(3), list(every)).fits


def test_every_node_in_a_rotated_or_shuffled_order_is_every_node_but_a_duplicate_is_not() -> None:
    """kube-scheduler's list of every node is in another order each pod; an answer must name only nodes sent."""
    state = cluster(6)
    take(state, "n02", 0, 10, "a")
    take(state, "n02", 1, 10, "b")  # n02 fits no whole card
    index = PlacementIndex(state, "default")
    every = state.node_names()
    fits, reasons = plain_filter(index, 10, every)
    for names in (every[2:] + every[:2], every[5:] + every[:5], every[::-1]):
        verdict = index.filter(demand(10), list(names))
        assert set(verdict.fits) == fits
        assert {**verdict.failed, **verdict.unresolvable} == reasons
    # as many names as nodes, one node named twice and another left out, rotated or not
    for twice in ([*every[:-1], every[0]], [*every[3:], every[0], every[0], every[2]]):
        verdict = index.filter(demand(10), twice)
        assert set(verdict.fits) == fits & set(twice)


def test_a_new_node_is_not_missed_by_the_every_node_shortcut() -> None:
    state = cluster(4)
    index = PlacementIndex(state, "default")
    names = state.node_names()
    index.filter(demand(3), list(names))
    state.set_node("n99", Inventory(cards=(Card.of_model("910B3", 0, "n99-c0"),)))
    verdict = index.filter(demand(3), list(names))  # the old list no longer names every node
    assert set(verdict.fits) == set(names)
    assert "n99" in index.filter(demand(3), [*names, "n99"]).fits


def test_prioritize_after_filter_scores_only_the_nodes_named() -> None:
    state = cluster()
    for i, node in enumerate(state.node_names()[:6]):
        take(state, node, 0, 1 + i, f"p{i}")  # different costs
    take(state, "n10", 0, 10, "full-a")
    take(state, "n10", 1, 10, "full-b")  # n10 does not fit a whole card
    index = PlacementIndex(state, "default")
    fits = index.filter(demand(10), state.node_names()).fits
    assert "n10" not in fits
    # Between filter and prioritize other binds land: n10 frees a card, n11 fills up.
    state.release("full-b")
    take(state, "n11", 0, 10, "q1")
    take(state, "n11", 1, 10, "q2")
    names = json.loads(json.dumps(fits))  # as decoded from the scheduler's request: equal, not identical
    groups = index.score_groups(demand(10), names)
    scored = {n for _, group in groups for n in group}
    assert "n10" not in scored  # fits now, but the scheduler did not name it
    assert "n11" not in scored  # named, but no longer fits
    assert scored <= set(names)
    wanted = set(names) - {"n11"}
    reference = index.scores(demand(10), random.Random(1).sample(sorted(wanted), len(wanted)))
    assert {n: s for s, group in groups for n in group} == {n: s for n, s in reference.items() if s}
