"""The production path (the extender's service over the state its watch builds) decides as the benchmark's core
replay does on the same snapshot, and the kube-scheduler model combines scores as the chart configures it."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from flexnpu.annotations import decode_assignment
from flexnpu.bench import placement as bench
from flexnpu.bench.openb import UNITS, load_nodes, load_pods
from flexnpu.bench.placement_production import (
    KubeScheduler,
    ProductionReplay,
    SchedulerProfile,
    chart_profile,
    node_object,
    nodes_to_find,
    pod_object,
    replay_production,
)
from flexnpu.extender.core.model import NodeState
from flexnpu.extender.core.placement import MAX_SCORE, choose, filter_nodes, score_nodes
from flexnpu.extender.index import PlacementIndex
from flexnpu.names import ANNOTATION_ASSIGNED

NODES = """sn,cpu_milli,memory_mib,gpu,model
a,32000,65536,2,T4
b,64000,131072,4,T4
c,16000,32768,8,V100M16
d,96000,262144,8,V100M16
e,8000,16384,1,T4
"""
PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli
p0,4000,8192,1,500
p1,8000,16384,1,250
p2,2000,4096,1,1000
p3,16000,32768,2,1000
p4,6000,4096,0,0
p5,4000,65536,1,300
p6,12000,8192,4,1000
p7,1000,2048,1,750
"""


# The same pods in the 6-column format, some restricted to a card model: the models' pressure steers the rest.
PODS_WITH_SPEC = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec
p0,4000,8192,1,500,
p1,8000,16384,1,250,T4
p2,2000,4096,1,1000,
p3,16000,32768,2,1000,V100M16
p4,6000,4096,0,0,
p5,4000,65536,1,300,T4
p6,12000,8192,4,1000,
p7,1000,2048,1,750,T4|V100M16
"""


def make_trace(tmp_path: Path, pods: str) -> bench.Trace:
    (tmp_path / "nodes.csv").write_text(NODES, encoding="utf-8")
    (tmp_path / "pods.csv").write_text(pods, encoding="utf-8")
    nodes = load_nodes(tmp_path / "nodes.csv")
    return bench.Trace(nodes=nodes, pods=load_pods(tmp_path / "pods.csv", nodes))


@pytest.fixture
def trace(tmp_path: Path) -> bench.Trace:
    return make_trace(tmp_path, PODS)


@pytest.mark.parametrize("pods", [PODS, PODS_WITH_SPEC])
@pytest.mark.parametrize("policy", ["default", "fgd", "bestfit"])
def test_the_production_path_and_the_core_replay_choose_alike_on_the_same_snapshot(
    tmp_path: Path, pods: str, policy: str
) -> None:
    trace = make_trace(tmp_path, pods)
    order = bench.arrival_order(trace.pods, trace.capacity_milli, seed=3)
    stats = bench.trace_stats(trace.pods, policy, trace.nodes)
    assert bool(stats.pressure) == (pods is PODS_WITH_SPEC)
    production = ProductionReplay(trace.nodes, policy, seed=3, profile=SchedulerProfile(), units=UNITS, stats=stats)
    core = {n.name: n for n in trace.nodes}
    for serial, pod in enumerate(order):
        demand = pod.demand
        fits, _ = filter_nodes(demand, core.values())
        expected = score_nodes(demand, fits, policy, stats)
        obj = pod_object(serial, pod, UNITS)
        names = production.service.filter({"Pod": obj, "Nodes": None, "NodeNames": list(core)})["NodeNames"]
        if demand.request.units:  # a CPU-only pod passes the extender's filter: kube-scheduler checks its CPU
            # only the nodes the core scores MAX_SCORE pass (best_nodes_only, the default)
            assert sorted(names or []) == sorted(n for n, s in expected.items() if s == MAX_SCORE)
        names = [f.name for f in fits]
        groups = production.service.prioritize({"Pod": obj, "Nodes": None, "NodeNames": names})
        assert {n: s for s, group in groups for n in group} == {n: s for n, s in expected.items() if s}
        if not fits:
            continue
        target = min(n for n, s in expected.items() if s == max(expected.values()))
        cards = choose(demand, core[target], policy, stats)
        core[target] = core[target].with_assignments(cards, demand.cpu_milli, demand.host_memory_mib)
        if demand.request.units:
            assert asyncio.run(production._bind(obj, target))
            notes = production.writer.annotations[obj["metadata"]["name"]]
            assert [(a.uuid, a.units) for a in decode_assignment(notes[ANNOTATION_ASSIGNED])] == [
                (a.uuid, a.units) for a in cards
            ]
        production.scheduler.assume(target, demand.cpu_milli, demand.host_memory_mib, 0)
        production._watch(obj, target)
        assert resources(production.state.node(target)) == resources(core[target])  # the watch rebuilt the node


def resources(node: NodeState | None) -> object:
    """What placement reads of a node (card memory aside: the replay's cards have HBM, the core's none)."""
    assert node is not None
    return (
        [(c.uuid, c.model, c.units_total, c.units_used) for c in node.cards],
        node.cpu_milli_total,
        node.cpu_milli_used,
        node.host_memory_mib_total,
        node.host_memory_mib_used,
    )


def test_a_cpu_only_pod_goes_through_kube_scheduler_alone_and_is_counted(trace: bench.Trace) -> None:
    replay = ProductionReplay(trace.nodes, "default", seed=1, profile=SchedulerProfile(), units=UNITS)
    cpu_only = next(p for p in trace.pods if p.milli == 0)

    node = asyncio.run(replay.place(0, cpu_only))

    assert node is not None
    snapshot = replay.state.node(node)
    assert snapshot is not None and snapshot.cpu_milli_used == cpu_only.demand.cpu_milli
    assert snapshot.host_memory_mib_used == cpu_only.demand.host_memory_mib


def test_the_production_replay_counts_arrived_and_allocated(trace: bench.Trace) -> None:
    order = bench.arrival_order(trace.pods, trace.capacity_milli, seed=42)

    outcome = replay_production(trace.nodes, order, "default", 42, (100, 130), profile=SchedulerProfile())

    assert outcome.arrived_milli == sum(p.milli for p in order)
    placed = [p for p, where in zip(order, outcome.placements, strict=True) if where is not None]
    assert outcome.allocated_milli == sum(p.milli for p in placed)
    assert outcome.failed == len(order) - len(placed)
    assert set(outcome.unallocated_pct) == {100, 130}


@pytest.mark.parametrize(("nodes", "percentage", "expected"), [
    (50, 0, 50), (1213, 0, 497), (5000, 0, 500), (100_000, 0, 5000), (1213, 100, 1213), (1213, 20, 242),
])  # fmt: skip
def test_kube_scheduler_looks_for_as_many_feasible_nodes_as_it_does(nodes: int, percentage: int, expected: int) -> None:
    assert nodes_to_find(SchedulerProfile(percentage_of_nodes_to_score=percentage), nodes) == expected


def test_the_extender_score_outweighs_the_plugins_by_its_weight(trace: bench.Trace) -> None:
    objects = [node_object(n, UNITS) for n in trace.nodes]
    scheduler = KubeScheduler(objects, SchedulerProfile(extender_weight=10), random.Random(0))

    # Plugins alone prefer the emptiest node; one extender point (x weight 10 x 10) beats any plugin difference.
    assert scheduler.select(["a", "d"], 1000, 1024, {}) == "d"
    assert scheduler.select(["a", "d"], 1000, 1024, {"a": 3, "d": 1}) == "a"
    assert scheduler.select(["a", "d"], 1000, 1024, {"a": 2, "d": 2}) == "d"


def test_the_chart_gives_the_extender_weight_and_the_nodes_to_score() -> None:
    profile = chart_profile()

    assert profile.extender_weight >= 1
    assert 0 <= profile.percentage_of_nodes_to_score <= 100


def test_the_production_path_learns_the_models_pressure_online(tmp_path: Path) -> None:
    trace = make_trace(tmp_path, PODS_WITH_SPEC)
    replay = ProductionReplay(trace.nodes, "default", seed=5, profile=SchedulerProfile(), units=UNITS)
    # The replay's index learns from 100 pods on; this trace has fewer.
    replay.service.index = PlacementIndex(replay.state, "default", units_per_card=UNITS, min_pods=5, clock=replay.clock)
    order = bench.arrival_order(trace.pods, trace.capacity_milli, seed=5)
    for serial, pod in enumerate(order):
        asyncio.run(replay.place(serial, pod))
    learnt = replay.service.index.stats
    assert learnt is not None
    # Against the whole trace's pressure: the online view saw the inflated order, so the same models, near values.
    offline = bench.trace_stats(trace.pods, "default", trace.nodes)
    assert set(learnt.pressure) == set(offline.pressure) == {"T4", "V100M16"}
