"""The published simulator's FGD and Best-fit scores: whole numbers, coarse rounding, min-max normalisation."""

from __future__ import annotations

import pytest

from flexnpu.bench.openb import UNITS
from flexnpu.bench.published_scorers import _bestfit, _fgd, _normalised
from flexnpu.extender.core.fit import NodeFit
from flexnpu.extender.core.model import CardState, NodeState, PodDemand
from flexnpu.units import UnitsConfig, parse_vnpu_request


@pytest.mark.parametrize(("gradient", "score"), [
    (0.0, 50), (-0.039, 50), (-0.04, 50), (-0.041, 51), (0.04, 49), (-1.0, 73), (1.0, 26), (-50.0, 100),
    (900.0, 0),
])  # fmt: skip
def test_fgd_scores_are_the_sigmoid_of_the_gradient_truncated(gradient: float, score: int) -> None:
    assert _fgd(gradient) == score


def node(cpu_free: int, free_units: list[int]) -> NodeState:
    cards = tuple(CardState(f"c{i}", i, "T4", UNITS, UNITS - free, 0, 0, True) for i, free in enumerate(free_units))
    return NodeState("n", cards, UNITS, cpu_milli_total=64000, cpu_milli_used=64000 - cpu_free)


def test_bestfit_scores_what_the_node_has_left_against_the_published_maxima() -> None:
    demand = PodDemand(request=parse_vnpu_request(500, UnitsConfig(units_per_card=UNITS)), cpu_milli=4000)
    fit = NodeFit(node(cpu_free=36000, free_units=[1000, 500]), (0, 1), 500, 1)

    # left: 32000m CPU, 1000 milli-GPU: 1 - (0.5 * 0.25 + 0.5 * 0.125) = 0.8125
    assert _bestfit(fit, demand, 500) == 81


def test_normalisation_maps_to_0_100_and_merges_close_scores() -> None:
    assert _normalised({"a": 10, "b": 20, "c": 30}) == {"a": 0, "b": 50, "c": 100}
    assert _normalised({"a": 7, "b": 7}) == {"a": 0, "b": 0}
    spread = _normalised({f"n{i}": i for i in range(301)})
    assert spread["n1"] == spread["n2"] == 0  # 301 raw values into 101 normalised ones
