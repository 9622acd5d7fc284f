"""Which cards a pod gets, how policies score nodes, and the policy names."""

from __future__ import annotations

import pytest
from placement_kit import HBM, card, demand, empty_node, node

from flexnpu.errors import ValidationError
from flexnpu.extender.core.model import CPU_ONLY, PodDemand
from flexnpu.extender.core.placement import (
    MAX_SCORE,
    POLICIES,
    EvaluationMemo,
    PlacementError,
    choose,
    filter_nodes,
    policy,
    score_nodes,
    workload_stats,
)
from flexnpu.extender.core.stats import cluster_stats, cpu_only_shape, demand_shape

ALL = sorted(POLICIES)


def indices(assignments: tuple[object, ...]) -> list[int]:
    return [a.index for a in assignments]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("used", [(0,) * 8, (3, 0, 0, 0, 0, 0, 0, 0), (0, 0, 10, 0, 10, 10, 0, 0)])
def test_whole_cards_stay_on_one_hccs_ring_when_one_has_room(name: str, used: tuple[int, ...]) -> None:
    the_node = node("n", *(card(i, used=u) for i, u in enumerate(used)))
    for units in (20, 30, 40):
        try:
            chosen = indices(choose(demand(units), the_node, name))
        except PlacementError:
            continue
        ring_has_room = any(sum(used[i] == 0 for i in range(r * 4, r * 4 + 4)) >= units // 10 for r in (0, 1))
        assert len({i // 4 for i in chosen}) == 1 or not ring_has_room, (units, chosen)
        assert len(chosen) == units // 10
        assert all(used[i] == 0 for i in chosen)


@pytest.mark.parametrize("name", ALL)
def test_whole_cards_go_to_the_ring_they_fill_best(name: str) -> None:
    the_node = node("n", *(card(i, used=10 if i in (4, 5) else 0) for i in range(8)))
    assert indices(choose(demand(20), the_node, name)) == [6, 7]


def test_eight_whole_cards_span_both_rings() -> None:
    chosen = choose(demand(80), empty_node("n"), "default")
    assert indices(chosen) == list(range(8))
    assert all(a.units == 10 and a.memory_mib == HBM for a in chosen)


def test_fraction_gets_its_share_of_memory_by_default() -> None:
    (assignment,) = choose(demand(3), empty_node("n", count=1), "binpack")
    assert (assignment.uuid, assignment.units, assignment.memory_mib) == ("npu-0", 3, 3 * HBM // 10)


def test_explicit_memory_wins_over_the_default_rule() -> None:
    (assignment,) = choose(demand(3, memory_mib=1234), empty_node("n", count=1), "spread")
    assert assignment.memory_mib == 1234


@pytest.mark.parametrize(("name", "expected"), [("binpack", 1), ("spread", 0)])
def test_binpack_fills_the_fullest_card_spread_the_emptiest(name: str, expected: int) -> None:
    the_node = node("n", card(0, used=2), card(1, used=6), card(2, used=9))
    assert indices(choose(demand(3), the_node, name)) == [expected]


@pytest.mark.parametrize(("name", "best"), [("binpack", "full"), ("spread", "empty"), ("bestfit", "full")])
def test_node_choice_follows_the_policy(name: str, best: str) -> None:
    nodes = [node("empty", card(0), card(1)), node("full", card(0, used=7), card(1, used=5))]
    fits, _ = filter_nodes(demand(2), nodes)
    scores = score_nodes(demand(2), fits, name)
    assert scores[best] == MAX_SCORE
    assert max(v for k, v in scores.items() if k != best) < MAX_SCORE


def test_fragmentation_aware_policy_fills_a_fragment_rather_than_a_free_card() -> None:
    stats = cluster_stats([demand_shape(demand(3), 10)] * 5 + [demand_shape(demand(10), 10)] * 5, 10)
    nodes = [node("fresh", card(0), card(1)), node("holey", card(0, used=7), card(1))]
    for name in ("fgd", "default"):
        fits, _ = filter_nodes(demand(3), nodes)
        assert score_nodes(demand(3), fits, name, stats)["holey"] == MAX_SCORE
        assert indices(choose(demand(3), nodes[1], name, stats)) == [0]


def test_default_policy_avoids_stranding_cards_behind_exhausted_cpu() -> None:
    shapes = [demand_shape(demand(10, cpu_milli=4000), 10)] * 8 + [cpu_only_shape(4000)] * 2
    stats = cluster_stats(shapes, 10, coverage=1.0)
    cpu_only = demand(1, cpu_milli=4000)
    nodes = [node("tight", card(0), card(1), cpu_total=8000), node("roomy", card(0), card(1), cpu_total=16000)]
    fits, _ = filter_nodes(cpu_only, nodes)
    assert score_nodes(cpu_only, fits, "default", stats)["roomy"] == MAX_SCORE


@pytest.mark.parametrize("name", ALL)
def test_scores_stay_within_zero_and_ten(name: str) -> None:
    nodes = [
        node(f"n{i}", *(card(j, used=(i * 3 + j) % 10) for j in range(4)), cpu_total=64000, cpu_used=i * 1000)
        for i in range(12)
    ]
    memo = EvaluationMemo()
    for units in (1, 4, 9, 10, 20):
        fits, _ = filter_nodes(demand(units), nodes, memo)
        scores = score_nodes(demand(units), fits, name, memo=memo)
        assert scores == score_nodes(demand(units), fits, name)
        assert all(0 <= s <= MAX_SCORE for s in scores.values())
        assert not fits or max(scores.values()) == MAX_SCORE


def test_choose_refuses_a_node_that_does_not_fit() -> None:
    with pytest.raises(PlacementError, match="9 free units") as caught:
        choose(demand(10), node("n", card(0, used=1)), "default")
    assert caught.value.refusal.missing_units == 1


def test_policy_lookup_knows_aliases_and_names_the_known_ones() -> None:
    assert policy("fgd+") is policy("default")
    with pytest.raises(ValidationError, match="binpack"):
        policy("worstfit")


def test_workload_stats_weigh_shapes_by_frequency_and_measure_cpu_per_unit() -> None:
    pods = [demand(3, cpu_milli=3000)] * 6 + [demand(20, cpu_milli=8000)] * 2 + [PodDemand(CPU_ONLY, cpu_milli=5)] * 2
    stats = workload_stats(pods, 10, "default")
    shapes = {(s.units, s.cards): s.weight for s in stats.shapes}
    assert shapes == {(3, 1): 0.6, (10, 2): 0.2, (0, 0): 0.2}
    assert stats.cpu_per_unit == (6 * 3000 + 2 * 8000) / (6 * 3 + 2 * 20)
    assert {(s.units, s.cards) for s in workload_stats(pods, 10, "fgd").shapes} == {(3, 1), (10, 2), (0, 0)}
