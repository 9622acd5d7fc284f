"""Model pressure: the share of a card model that pods restricted to few models will want, and how the default
policy uses it to keep pods that may run anywhere off the models others need."""

from __future__ import annotations

import math

import pytest
from placement_kit import card, demand, node

from flexnpu.annotations import Inventory
from flexnpu.cards import Card
from flexnpu.extender.core.model import CPU_ONLY, NodeState, PodDemand
from flexnpu.extender.core.placement import NodeFit, evaluate, filter_nodes, fit_node, score_nodes, workload_stats
from flexnpu.extender.core.policies import PRESSURE_WEIGHT
from flexnpu.extender.core.stats import ClusterStats, Shape, model_cards, model_pressure
from flexnpu.extender.index import PlacementIndex
from flexnpu.extender.state import ClusterState

A, B = frozenset({"A"}), frozenset({"B"})


def test_pressure_is_the_share_of_each_model_the_restricted_pods_would_take_in_a_full_cluster() -> None:
    counts = {
        Shape(10, 1): 6,  # anywhere: demand, no pressure
        Shape(10, 1, models=B): 2,  # B only: 2 cards of B
        Shape(10, 1, models=A | B): 2,  # A or B: spread 8:2 by their cards
    }
    pressure = model_pressure(counts, {"A": 8, "B": 2})
    # Demand 10 cards = the cluster's 10: A gets 1.6 restricted cards of its 8, B 2 + 0.4 of its 2.
    assert pressure == pytest.approx({"A": 1.6 / 8, "B": 2.4 / 2})


def test_pressure_scales_the_workload_to_the_cluster_and_ignores_what_it_cannot_place() -> None:
    counts = {
        Shape(5, 1): 30,  # 15 cards of demand in all...
        Shape(10, 2, models=B): 1,  # ...2 of them B only,
        Shape(10, 1, models=frozenset({"C"})): 3,  # 3 on a model the cluster lacks: demand, no pressure
        Shape(0, 0, cpu_milli=4000): 50,  # CPU only: neither
        Shape(10, 1, models=A): 0,  # no pod of it left
    }
    pressure = model_pressure(counts, {"A": 10, "B": 10})
    assert set(pressure) == {"B"}
    assert pressure["B"] == pytest.approx(2 / 20 * 20 / 10)


@pytest.mark.parametrize(
    ("counts", "cards"),
    [({}, {"A": 4}), ({Shape(0, 0, cpu_milli=1): 3}, {"A": 4}), ({Shape(10, 1, models=A): 3}, {})],
)
def test_no_demand_or_no_cards_is_no_pressure(counts: dict[Shape, int], cards: dict[str, int]) -> None:
    assert model_pressure(counts, cards) == {}


def test_model_cards_counts_healthy_cards_per_model() -> None:
    nodes = [
        node("n0", card(0, model="A"), card(1, model="A", healthy=False)),
        node("n1", card(0, model="B"), card(1, model="A")),
    ]
    assert model_cards(nodes) == {"A": 2, "B": 1}


def test_the_stats_measure_pressure_over_every_pod_even_those_their_shapes_leave_out() -> None:
    pods = [demand(3)] * 95 + [demand(10, models=B)] * 5
    stats = workload_stats(pods, 10, "fgd", {"A": 9, "B": 1})  # fgd keeps the shapes covering 95% of pods
    assert [s.units for s in stats.shapes] == [3]
    assert stats.pressure == pytest.approx({"B": 5 / (95 * 0.3 + 5) * 10})
    assert workload_stats(pods, 10, "default").pressure == {}  # no cards given: no pressure


def pair() -> list[NodeState]:
    return [node("a", card(0, model="A"), card(1, model="A")), node("b", card(0, model="B"), card(1, model="B"))]


def stats_of(cards: dict[str, int] | None) -> ClusterStats:
    history = [demand(10)] * 8 + [demand(10, models=B)] * 2
    return workload_stats(history, 10, "default", cards)


def costs(pod: PodDemand, stats: ClusterStats) -> dict[str, float]:
    out = {}
    for n in pair():
        fit = fit_node(pod, n)
        if isinstance(fit, NodeFit):
            out[n.name] = evaluate(pod, fit, "default", stats).cost
    return out


@pytest.mark.parametrize("units", [3, 10, 20])
def test_a_pod_that_may_run_anywhere_pays_for_the_pressed_model_it_takes(units: int) -> None:
    pressed, plain = stats_of({"A": 2, "B": 2}), stats_of(None)
    assert pressed.pressure == pytest.approx({"B": 2 / 10 * 4 / 2})
    with_pressure, without = costs(demand(units), pressed), costs(demand(units), plain)
    cards = max(1, units // 10) * min(units, 10) / 10
    # Only the pressure term differs, and only on the B node: by its weight x pressure x the cards taken.
    assert with_pressure["a"] == pytest.approx(without["a"])
    assert with_pressure["b"] - without["b"] == pytest.approx(PRESSURE_WEIGHT * pressed.pressure["B"] * cards)
    fits, _ = filter_nodes(demand(units), pair())
    top = score_nodes(demand(units), fits, "default", pressed)
    assert top["a"] > top["b"]


def test_a_pod_that_needs_the_pressed_model_still_gets_it() -> None:
    pressed = stats_of({"A": 2, "B": 2})
    fits, _ = filter_nodes(demand(3, models=B), pair())
    assert set(score_nodes(demand(3, models=B), fits, "default", pressed)) == {"b"}


def test_a_cpu_only_pod_feels_no_pressure() -> None:
    pod = PodDemand(CPU_ONLY, cpu_milli=1000)
    assert costs(pod, stats_of({"A": 2, "B": 2})) == pytest.approx(costs(pod, stats_of(None)))


def test_the_index_measures_pressure_against_the_cards_of_its_cluster() -> None:
    state = ClusterState()
    for name, model, count in (("n0", "910B3", 6), ("n1", "910B4", 2)):
        state.set_node(name, Inventory(cards=tuple(Card.of_model(model, i, f"{name}-c{i}") for i in range(count))))
    index = PlacementIndex(state, "default", min_pods=4, stats_refresh_s=60)
    for i in range(3):
        index.observe(f"any-{i}", demand(10))
    index.observe("b4", demand(10, models=frozenset({"910B4"})))
    index.filter(demand(3), state.node_names())
    assert index.stats is not None
    # 1 card of 4 wanted by the 910B4-only pod: scaled to 8 cards, 2 of the 2 910B4 cards.
    assert set(index.stats.pressure) == {"910B4"}
    assert math.isclose(index.stats.pressure["910B4"], 1 / 4 * 8 / 2)
