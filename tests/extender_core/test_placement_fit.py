"""Which nodes fit a pod, and the reason given for every node that does not."""

from __future__ import annotations

import pytest
from placement_kit import HBM, card, demand, empty_node, node

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.cards import Card, Health
from flexnpu.extender.core.model import CPU_ONLY, PodDemand, node_state
from flexnpu.extender.core.placement import NodeFit, Refusal, RefusalKind, filter_nodes, fit_node
from flexnpu.units import UnitsConfig, VnpuRequest


@pytest.mark.parametrize(
    ("the_node", "the_demand", "kind", "words"),
    [
        (node("n", card(0, used=8)), demand(3), RefusalKind.UNITS, "2 free units, 3 needed"),
        (node("n", card(0, used=2, memory_used=HBM - 100)), demand(3), RefusalKind.MEMORY, "100 MiB free memory"),
        (node("n", card(0)), demand(3, memory_mib=HBM + 1), RefusalKind.MEMORY, f"{HBM + 1} MiB needed"),
        (node("n", card(0, model="910B4")), demand(3, models=frozenset({"910B3"})), RefusalKind.MODEL, "910B3"),
        (node("n", card(0, healthy=False)), demand(3), RefusalKind.UNHEALTHY, "unhealthy"),
        (node("n", card(0), cpu_total=4000, cpu_used=3000), demand(3, cpu_milli=1500), RefusalKind.CPU, "1000m free"),
        (node("n", card(0), units_per_card=5), demand(8), RefusalKind.REQUEST, "cards here have 5"),
        (node("n"), demand(3), RefusalKind.NO_CARDS, "no cards"),
        (empty_node("n", count=2), demand(40), RefusalKind.TOO_FEW_CARDS, "4 whole cards, the node has 2"),
        (node("n", card(0), card(1, used=1)), demand(20), RefusalKind.UNITS, "1 of 2 cards have room"),
    ],
)
def test_every_refusal_names_its_reason(the_node: object, the_demand: PodDemand, kind: RefusalKind, words: str) -> None:
    verdict = fit_node(the_demand, the_node)  # type: ignore[arg-type]
    assert isinstance(verdict, Refusal)
    assert verdict.kind is kind
    assert verdict.node == "n"
    assert verdict.reason.startswith("node n: ")
    assert words in verdict.reason


def test_refusal_carries_the_closest_card_and_what_it_misses() -> None:
    verdict = fit_node(demand(6), node("n", card(0, used=9, memory_used=0), card(1, used=7, memory_used=0)))
    assert isinstance(verdict, Refusal)
    assert (verdict.card, verdict.missing_units, verdict.missing_memory_mib) == ("npu-1", 3, 0)


def test_cpu_refusal_says_how_much_cpu_is_missing() -> None:
    verdict = fit_node(demand(1, cpu_milli=5000), node("n", card(0), cpu_total=8000, cpu_used=6000))
    assert isinstance(verdict, Refusal)
    assert verdict.missing_cpu_milli == 3000


def test_untracked_cpu_never_refuses() -> None:
    assert isinstance(fit_node(demand(1, cpu_milli=10**9), node("n", card(0))), NodeFit)


def test_fit_lists_only_the_cards_that_can_take_the_share() -> None:
    the_node = node("n", card(0, used=9), card(1, healthy=False), card(2, model="910B4"), card(3, used=4))
    verdict = fit_node(demand(5, models=frozenset({"910B3"})), the_node)
    assert isinstance(verdict, NodeFit)
    assert (verdict.positions, verdict.units, verdict.cards_needed) == ((3,), 5, 1)


def test_whole_cards_take_every_unit_of_each_card() -> None:
    verdict = fit_node(demand(20), node("n", card(0), card(1, used=1), card(2)))
    assert isinstance(verdict, NodeFit)
    assert (verdict.positions, verdict.units, verdict.cards_needed) == ((0, 2), 10, 2)


def test_cpu_only_demand_fits_a_node_without_cards() -> None:
    verdict = fit_node(PodDemand(request=CPU_ONLY, cpu_milli=1000), node("n", cpu_total=2000))
    assert isinstance(verdict, NodeFit)
    assert verdict.cards_needed == 0


def test_filter_splits_fits_from_failures_with_reasons() -> None:
    fits, failed = filter_nodes(demand(5), [node("a", card(0)), node("b", card(0, used=6)), node("c", card(0))])
    assert [f.name for f in fits] == ["a", "c"]
    assert set(failed) == {"b"}
    assert "4 free units, 5 needed" in failed["b"]


def test_node_state_counts_the_assignments_of_its_pods() -> None:
    inventory = Inventory(
        cards=(Card.of_model("910B3", 0, "u0"), Card.of_model("910B4", 1, "u1", health=Health.UNHEALTHY)),
        units=UnitsConfig(units_per_card=10, oversubscription=2.0),
    )
    assigned = [CardAssignment("u0", 0, 3, 1000), CardAssignment("u0", 0, 4, 2000), CardAssignment("gone", 5, 9, 9)]
    state = node_state("n", inventory, assigned, cpu_milli_total=4000)
    first, second = state.cards
    assert (first.units_total, first.units_used, first.memory_used_mib, first.healthy) == (20, 7, 3000, True)
    assert (second.units_used, second.memory_total_mib, second.healthy) == (0, 32768, False)
    assert (state.units_per_card, state.cpu_milli_total) == (10, 4000)


def test_oversubscribed_card_takes_more_than_one_card_of_shares() -> None:
    the_node = node("n", card(0, used=10, memory_used=0, units_total=20))
    assert isinstance(fit_node(demand(8, memory_mib=1), the_node), NodeFit)
    assert isinstance(fit_node(PodDemand(VnpuRequest(units=11, whole_cards=0)), the_node), Refusal)
