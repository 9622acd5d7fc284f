"""The published FGD scheduler as re-implemented for the benchmark: typical pods, fragmentation, score, choices.

The expected values are worked out by hand from the published formulas (hkust-adsl/kubernetes-scheduler-simulator,
``pkg/utils/frag.go`` and ``pkg/simulator/plugin/fgd_score.go``), in the comments next to each case.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flexnpu.bench import placement as bench
from flexnpu.bench.openb import UNITS
from flexnpu.bench.published_fgd import (
    NodeResource,
    PodResource,
    PublishedFgd,
    TypicalPod,
    fgd_score,
    fragmentation,
    select_host,
    typical_pods,
)
from flexnpu.bench.published_scorers import bestfit_cards, published_placer
from flexnpu.extender.core.fit import NodeFit, fit_node
from flexnpu.extender.core.model import CardState, NodeState, PodDemand
from flexnpu.units import UnitsConfig, parse_vnpu_request

SHARE = PodResource(milli_cpu=2000, milli_gpu=500, gpu_number=1)
WHOLE = PodResource(milli_cpu=4000, milli_gpu=1000, gpu_number=1)
CPU_ONLY = PodResource(milli_cpu=1000, milli_gpu=0, gpu_number=0)
V100_ONLY = PodResource(milli_cpu=1000, milli_gpu=200, gpu_number=1, gpu_type="V100")
TYPICAL = (TypicalPod(SHARE, 0.5), TypicalPod(WHOLE, 0.25), TypicalPod(CPU_ONLY, 0.125), TypicalPod(V100_ONLY, 0.125))
# A T4 node with 6000m CPU free and cards with 1000, 300, 0 and 600 thousandths free (1900 in all).
NODE = NodeResource(gpu_type="T4", cpu_left=6000, gpu_left=(1000, 300, 0, 600))


def test_typical_pods_are_the_most_frequent_keys_up_to_95_percent_renormalised() -> None:
    # 20 pods; 95% is 19: SHARE (12), then WHOLE (17 < 19), then CPU_ONLY (19, no longer below 19): V100_ONLY is
    # cut, and the weights are count / 20 divided by the kept share 19 / 20.
    pods = [SHARE] * 12 + [WHOLE] * 5 + [CPU_ONLY] * 2 + [V100_ONLY]
    assert typical_pods(pods) == (
        TypicalPod(SHARE, 12 / 20 / (19 / 20)),
        TypicalPod(WHOLE, 5 / 20 / (19 / 20)),
        TypicalPod(CPU_ONLY, 2 / 20 / (19 / 20)),
    )


def test_typical_pods_of_equal_count_go_larger_key_first() -> None:
    # sort.Reverse over (count, CPU, GPU milli, GPU count, type): of two single pods the one asking more CPU leads.
    small, large = PodResource(1000, 0, 0), PodResource(3000, 0, 0)
    assert typical_pods([small, large], threshold=50) == (TypicalPod(large, 1.0),)


def test_fragmentation_counts_what_each_typical_pod_cannot_use() -> None:
    # SHARE fits (cards 0 and 3 have 500, CPU 6000 >= 2000): the cards under 500 are fragment, 300 + 0 -> 0.5 * 300
    # WHOLE fits on card 0: the other cards, 300 + 0 + 600 = 900 -> 0.25 * 900
    # CPU_ONLY never "fits" in the published measure: all 1900 -> 0.125 * 1900
    # V100_ONLY cannot use a T4 node: all 1900 -> 0.125 * 1900
    assert fragmentation(NODE, TYPICAL) == 150 + 225 + 237.5 + 237.5


def test_a_share_pod_takes_the_card_whose_score_is_best() -> None:
    # Pod: 3000m CPU, 300 thousandths of one card; the node's fragmentation before is 850. After, CPU left 3000:
    # card 0 -> (700, 300, 0, 600): SHARE 0.5 * 300, WHOLE lacks card and CPU 0.25 * 1600, CPU_ONLY and V100_ONLY
    #   0.125 * 1600 each: 950, score int(100 * sigmoid(-0.1)) = 47
    # card 1 -> (1000, 0, 0, 600): SHARE 0, WHOLE lacks CPU 0.25 * 1600, 200 + 200: 800, int(100 * sigmoid(0.05)) = 51
    # card 3 -> (1000, 300, 0, 300): SHARE 0.5 * 600, WHOLE 400, 200 + 200: 1100, int(100 * sigmoid(-0.25)) = 43
    assert fgd_score(NODE, PodResource(3000, 300, 1), TYPICAL) == (51, (1,))


def test_equal_cards_go_to_the_first_one() -> None:
    node = NodeResource("T4", 6000, (400, 1000, 1000))
    assert fgd_score(node, PodResource(1000, 500, 1), TYPICAL)[1] == (1,)


def test_whole_card_and_cpu_only_pods_are_scored_on_the_packed_node() -> None:
    # One whole card, 1000m CPU: the first free card, node after (0, 300, 0, 600) with 5000m CPU: SHARE 0.5 * 300,
    # WHOLE lacks a card 0.25 * 900, CPU_ONLY and V100_ONLY 0.125 * 900 each: 600; int(100 * sigmoid(0.25)) = 56.
    assert fgd_score(NODE, PodResource(1000, 1000, 1), TYPICAL) == (56, (0,))
    # CPU only, 5500m: 500m CPU left, every GPU typical pod now lacks CPU: all 1900 counts, 850 -> 1900;
    # int(100 * sigmoid(-1.05)) = 25, no card.
    assert fgd_score(NODE, PodResource(5500, 0, 0), TYPICAL) == (25, ())


def test_ties_go_to_the_smallest_node_name() -> None:
    assert select_host({"openb-node-0002": 51, "openb-node-0001": 51, "openb-node-0000": 50}) == "openb-node-0001"


def node_state(name: str, free: list[int], cpu_free: int = 32000) -> NodeState:
    cards = tuple(CardState(f"{name}-{i}", i, "T4", UNITS, UNITS - f, 0, 0, True) for i, f in enumerate(free))
    return NodeState(name, cards, UNITS, cpu_milli_total=64000, cpu_milli_used=64000 - cpu_free)


def demand(milli: int, cpu: int) -> PodDemand:
    return PodDemand(request=parse_vnpu_request(milli, UnitsConfig(units_per_card=UNITS)), cpu_milli=cpu)


def fits(pod: PodDemand, nodes: list[NodeState]) -> list[NodeFit]:
    verdicts = [fit_node(pod, n) for n in nodes]
    return [v for v in verdicts if isinstance(v, NodeFit)]


def test_the_scheduler_picks_the_first_node_of_equal_score_and_the_fgd_card() -> None:
    workload = [demand(500, 2000)] * 3 + [demand(1000, 4000)]
    scheduler = PublishedFgd(workload)
    nodes = [node_state("n2", [1000, 300]), node_state("n1", [1000, 300]), node_state("n0", [0, 0])]
    pod = demand(300, 1000)
    assert scheduler.place(pod, fits(pod, nodes)) == ("n1", (1,))


def test_published_bestfit_takes_the_tightest_card_first_by_index() -> None:
    node = NodeResource("T4", 8000, (1000, 600, 400, 600))
    assert bestfit_cards(node, PodResource(1000, 500, 1)) == (1,)
    assert bestfit_cards(node, PodResource(1000, 1000, 1)) == (0,)
    best_fit = published_placer("bestfit-published", [])
    nodes = [node_state("b", [1000, 1000]), node_state("a", [1000, 600])]
    pod = demand(500, 1000)
    assert best_fit.place(pod, fits(pod, nodes)) == ("a", (1,))


NODES = """sn,cpu_milli,memory_mib,gpu,model
a,2000,1024,2,T4
b,20000,1024,2,T4
c,50000,1024,0,
"""
PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n" + "".join(f"p{i},2000,1,1,1000\n" for i in range(4))
PODS += "q,7000,1,0,0\n"


@pytest.mark.parametrize("name", ["fgd-published", "bestfit-published"])
def test_the_replay_of_a_published_scheduler_counts_arrived_and_allocated(tmp_path: Path, name: str) -> None:
    # Node a can feed only one of the 2000m whole-card pods: three cards of four can ever be allocated.
    (tmp_path / bench.NODE_FILE).write_text(NODES, encoding="utf-8")
    (tmp_path / bench.POD_FILE.format("tiny5")).write_text(PODS, encoding="utf-8")
    trace = bench.load_trace(tmp_path, "tiny5")
    order = bench.arrival_order(trace.pods, trace.capacity_milli, seed=42)
    stats = bench.trace_stats(trace.pods, name)
    result = bench.replay(trace.nodes, order, name, stats, seed=42, workload=trace.pods)
    assert result.arrived_milli == sum(p.milli for p in order)
    assert result.allocated_milli == 3000
    assert result.unallocated_pct == {100: 25.0, 130: 25.0}


def test_a_published_scheduler_on_the_production_path_is_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / bench.NODE_FILE).write_text(NODES, encoding="utf-8")
    (tmp_path / bench.POD_FILE.format("tiny5")).write_text(PODS, encoding="utf-8")
    argv = ["--trace", "tiny5", "--policies", "fgd-published", "--paths", "production", "--data-dir", str(tmp_path)]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flexnpu bench placement: --policies") and "fgd-published" in err and "--paths core" in err
