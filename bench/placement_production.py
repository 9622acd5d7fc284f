"""The openb replay through the production path: the extender's service behind a model of kube-scheduler.

:mod:`flexnpu.bench.placement` calls the placement core directly and draws among its top scores. This module
instead drives what runs in a cluster: an :class:`ExtenderService` (its index, filter, prioritize and bind) over
a :class:`ClusterState` fed exactly as its watch feeds it (nodes through ``node_allocatable`` of a v1.Node, pods
through ``pod_facts`` of the v1.Pod the API server would stream after the bind), and in front of it kube-scheduler
as the chart configures it (``deploy/helm/flexnpu``: one profile with the default plugins, the extender with its
weight, ``percentageOfNodesToScore`` unset unless the chart sets it):

1. kube-scheduler's filter (NodeResourcesFit: CPU, memory and ``huawei.com/vnpu`` summed per node) over the nodes
   in its rotating order, stopping at ``numFeasibleNodesToFind`` feasible nodes (adaptive: 50% - nodes/125%, at
   least 5% and 100 nodes; all nodes when the chart sets 100);
2. the extender's ``filter`` over those (vnpu pods; CPU-only pods only when they too opt in to flexnpu-scheduler
   with ``spec.schedulerName``, the ``-all`` variants: by default they go to the default scheduler, which has no
   extender);
3. scores: NodeResourcesFit LeastAllocated (CPU and memory, weight 1) and NodeResourcesBalancedAllocation (weight
   1), each 0..100, plus the extender's 0..10 score times its weight times MaxNodeScore / MaxExtenderPriority (10);
   the plugins that score every node alike here (TaintToleration, NodeAffinity, PodTopologySpread, InterPodAffinity,
   ImageLocality: no taints, affinities, spread constraints or images in the trace) change no choice and are left
   out; the highest total wins, ties drawn at random (kube-scheduler's selectHost); a single feasible node is taken
   without scoring, as kube-scheduler does;
4. the extender's ``bind`` (cards chosen and reserved), then the watch event of the bound pod.

Card models: openb's models (P100, T4, G2, ...) are not in the contract's card table, so each node's inventory is
the value ``decode_inventory`` would return rather than an annotation to decode; everything else goes through the
JSON. Shapes are learnt online as in production (the index's history and refresh; the refresh interval runs on a
virtual clock that advances ``seconds_per_pod`` per pod) or, in the offline variant, given from the whole trace
as the published FGD has them. The index's shape cache is sized to the trace's shapes: a cache size changes the
time a replay takes, never a decision.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from flexnpu.annotations import Inventory
from flexnpu.bench.openb import UNITS, TracePod
from flexnpu.cards import Card
from flexnpu.extender.core.model import NodeState
from flexnpu.extender.core.stats import ClusterStats
from flexnpu.extender.index import PlacementIndex
from flexnpu.extender.informers import node_allocatable
from flexnpu.extender.pods import PodKey, pod_facts, pod_requests
from flexnpu.extender.service import ExtenderService
from flexnpu.extender.state import ClusterState
from flexnpu.names import ANNOTATION_CARD_MODEL, RESOURCE_VNPU
from flexnpu.units import UnitsConfig

MAX_NODE_SCORE: Final = 100
MAX_EXTENDER_PRIORITY: Final = 10
DEFAULT_MILLI_CPU: Final = 100  # kube-scheduler's non-zero defaults for scoring a pod that requests nothing
DEFAULT_MEMORY_MIB: Final = 200
CARD_HBM_MIB: Final = 16_000  # a multiple of every U used: the default memory rule never binds before the units do
CHART: Final = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "flexnpu"
# A burst, as the published protocol submits the trace: kube-scheduler with the extender places about 20 pods a
# second, so the index's 600 s refresh comes after some 12,000 pods.
SECONDS_PER_POD: Final = 0.05


@dataclass(frozen=True)
class SchedulerProfile:
    """What of kube-scheduler's configuration decides a placement."""

    extender_weight: int = 10
    percentage_of_nodes_to_score: int = 0  # 0: kube-scheduler's adaptive default
    fit_weight: int = 1
    balanced_weight: int = 1
    cpu_pods_to_extender: bool = False  # CPU-only pods opt in to flexnpu-scheduler too (spec.schedulerName)


def chart_profile(chart: Path = CHART) -> SchedulerProfile:
    """The profile the chart renders: the extender weight from values.yaml, ``percentageOfNodesToScore`` when the
    scheduler configuration template sets it (to a number or to a value of values.yaml)."""
    values = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8")) or {}
    scheduler = values.get("scheduler") or {}
    weight = int((scheduler.get("extender") or {}).get("weight", 10))
    template = (chart / "templates" / "scheduler-config.yaml").read_text(encoding="utf-8")
    match = re.search(r"percentageOfNodesToScore:\s*(\d+|\{\{[^}]*\.Values\.scheduler\.(\w+)[^}]*\}\})", template)
    percentage = 0
    if match:
        percentage = int(match.group(1)) if match.group(2) is None else int(scheduler.get(match.group(2)) or 0)
    return SchedulerProfile(extender_weight=weight, percentage_of_nodes_to_score=percentage)


def nodes_to_find(profile: SchedulerProfile, nodes: int) -> int:
    """kube-scheduler's numFeasibleNodesToFind."""
    if nodes < 100 or profile.percentage_of_nodes_to_score >= 100:
        return nodes
    percentage = profile.percentage_of_nodes_to_score or max(5, 50 - nodes // 125)
    return max(100, nodes * percentage // 100)


# -- the objects the watch would see ---------------------------------------------------------------------------


def node_object(node: NodeState, units: int) -> dict[str, Any]:
    """A v1.Node as the API server serves it: allocatable CPU, memory and vnpu units (``units`` per card)."""
    allocatable = {
        "cpu": f"{node.cpu_milli_total}m",
        "memory": f"{node.host_memory_mib_total}Mi",
        RESOURCE_VNPU: str(units * len(node.cards)),
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}, "status": {"allocatable": allocatable}}


def replay_units(pods: Sequence[TracePod]) -> int:
    """The coarsest cut that expresses every share of the trace exactly: U = 100 when every ``gpu_milli`` is a
    multiple of 10 (all shipped traces), else 1000. Shares scale exactly, so decisions do not change; only the
    uniform view used before any shape is learnt has U shapes, and it is ten times cheaper at U = 100."""
    return 100 if all(p.demand.request.units % 10 == 0 for p in pods) else UNITS


def node_inventory(node: NodeState, units: int) -> Inventory:
    cards = tuple(Card(uuid=c.uuid, index=c.index, model=c.model, aicores=1, hbm_mib=CARD_HBM_MIB) for c in node.cards)
    return Inventory(cards=cards, units=UnitsConfig(units_per_card=units))


def pod_object(serial: int, pod: TracePod, units: int) -> dict[str, Any]:
    """The v1.Pod of one trace row: CPU and memory requests, ``huawei.com/vnpu`` units (of a card cut into
    ``units``), allowed card models."""
    demand = pod.demand
    requests = {"cpu": f"{demand.cpu_milli}m", "memory": f"{demand.host_memory_mib}Mi"}
    request = demand.request
    if request.units:
        amount = request.units * units // UNITS if request.is_fraction else request.whole_cards * units
        requests[RESOURCE_VNPU] = str(amount)
    notes = {ANNOTATION_CARD_MODEL: "|".join(sorted(demand.models))} if demand.models else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{serial}", "namespace": "openb", "uid": f"uid-{serial}", "annotations": notes},
        "spec": {"containers": [{"name": "main", "resources": {"requests": requests}}]},
        "status": {"phase": "Pending"},
    }


class ReplayWriter:
    """The API calls of a bind, answered at once: the annotations and the Binding are kept for the watch event."""

    def __init__(self) -> None:
        self.annotations: dict[str, dict[str, str]] = {}
        self.bound: dict[str, str] = {}

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        raise AssertionError(f"the replay binds only pods it filtered ({namespace}/{name})")

    async def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        notes = self.annotations.setdefault(name, {})
        for key, value in annotations.items():
            if value is None:
                notes.pop(key, None)
            else:
                notes[key] = value

    async def bind_pod(self, key: PodKey, node: str, annotations: Mapping[str, str] | None = None) -> None:
        self.bound[key.name] = node
        self.annotations.setdefault(key.name, {}).update(annotations or {})

    async def create_claim(self, namespace: str, body: Mapping[str, Any]) -> None:
        return None

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        return None


# -- kube-scheduler --------------------------------------------------------------------------------------------


class KubeScheduler:
    """kube-scheduler's own view (its cache of requested resources per node) and its filter and score plugins."""

    def __init__(self, nodes: Sequence[dict[str, Any]], profile: SchedulerProfile, rng: random.Random) -> None:
        self.names = [str(n["metadata"]["name"]) for n in nodes]
        self.where = {name: i for i, name in enumerate(self.names)}
        capacity = [node_allocatable(n) for n in nodes]
        self.cpu_cap = [c for c, _ in capacity]
        self.mem_cap = [m for _, m in capacity]
        self.vnpu_cap = [int(n["status"]["allocatable"][RESOURCE_VNPU]) for n in nodes]
        self.cpu = [0] * len(nodes)
        self.mem = [0] * len(nodes)
        self.vnpu = [0] * len(nodes)
        self.cpu_nz = [0] * len(nodes)
        self.mem_nz = [0] * len(nodes)
        self.profile = profile
        self.rng = rng
        self.to_find = nodes_to_find(profile, len(nodes))
        self.next_start = 0

    def feasible(self, cpu: int, mem: int, vnpu: int) -> list[str]:
        """NodeResourcesFit over the nodes from the rotating start, up to numFeasibleNodesToFind of them."""
        count = len(self.names)
        found: list[str] = []
        processed = 0
        for step in range(count):
            i = (self.next_start + step) % count
            processed += 1
            if (
                self.cpu[i] + cpu <= self.cpu_cap[i]
                and self.mem[i] + mem <= self.mem_cap[i]
                and self.vnpu[i] + vnpu <= self.vnpu_cap[i]
            ):
                found.append(self.names[i])
                if len(found) >= self.to_find:
                    break
        self.next_start = (self.next_start + processed) % count
        return found

    def select(self, names: Sequence[str], cpu: int, mem: int, extender: Mapping[str, int]) -> str:
        """The highest total score (plugins 0..100 times weight, extender score scaled), ties at random."""
        if len(names) == 1:
            return names[0]
        scale = self.profile.extender_weight * MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY
        best: list[str] = []
        top = -1
        for name in names:
            total = self._plugins(self.where[name], cpu, mem) + scale * extender.get(name, 0)
            if total > top:
                top, best = total, [name]
            elif total == top:
                best.append(name)
        return best[0] if len(best) == 1 else self.rng.choice(best)

    def assume(self, name: str, cpu: int, mem: int, vnpu: int) -> None:
        i = self.where[name]
        self.cpu[i] += cpu
        self.mem[i] += mem
        self.vnpu[i] += vnpu
        self.cpu_nz[i] += cpu or DEFAULT_MILLI_CPU
        self.mem_nz[i] += mem or DEFAULT_MEMORY_MIB

    def _plugins(self, i: int, cpu: int, mem: int) -> int:
        cpu_used, mem_used = self.cpu_nz[i] + (cpu or DEFAULT_MILLI_CPU), self.mem_nz[i] + (mem or DEFAULT_MEMORY_MIB)
        least = (_least(cpu_used, self.cpu_cap[i]) + _least(mem_used, self.mem_cap[i])) // 2
        cpu_share = min(1.0, (self.cpu[i] + cpu) / self.cpu_cap[i]) if self.cpu_cap[i] else 1.0
        mem_share = min(1.0, (self.mem[i] + mem) / self.mem_cap[i]) if self.mem_cap[i] else 1.0
        balanced = int((1.0 - abs(cpu_share - mem_share) / 2) * MAX_NODE_SCORE)
        return self.profile.fit_weight * least + self.profile.balanced_weight * balanced


def _least(requested: int, capacity: int) -> int:
    if capacity == 0 or requested > capacity:
        return 0
    return (capacity - requested) * MAX_NODE_SCORE // capacity


# -- the replay ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductionOutcome:
    """Per pod, where it went (None: failed), and the unallocated share at each arrival level."""

    placements: tuple[str | None, ...]
    unallocated_pct: dict[int, float]
    allocated_milli: int
    arrived_milli: int
    failed: int


@dataclass
class _VirtualClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


class ProductionReplay:
    """One extender service, its state and a kube-scheduler model over one trace's nodes."""

    def __init__(
        self,
        nodes: Sequence[NodeState],
        policy_name: str,
        *,
        seed: int,
        profile: SchedulerProfile,
        units: int = UNITS,
        stats: ClusterStats | None = None,
        seconds_per_pod: float = SECONDS_PER_POD,
        max_shapes: int = 4096,
    ) -> None:
        self.state = ClusterState()
        self.units = units
        objects = [node_object(n, units) for n in nodes]
        for node, obj in zip(nodes, objects, strict=True):
            cpu, memory = node_allocatable(obj)
            self.state.set_node(node.name, node_inventory(node, units), cpu, memory)
        self.writer = ReplayWriter()
        self.service = ExtenderService(
            self.state, self.writer, policy=policy_name, units=UnitsConfig(units), identity="replay"
        )
        self.clock = _VirtualClock()
        self.seconds_per_pod = seconds_per_pod
        offline = stats is not None
        self.service.index = PlacementIndex(
            self.state,
            policy_name,
            units_per_card=units,
            max_shapes=max_shapes,
            min_pods=10**9 if offline else 100,
            clock=self.clock,
        )
        self.service.index.stats = stats
        self.scheduler = KubeScheduler(objects, profile, random.Random(seed))

    async def place(self, serial: int, pod: TracePod) -> str | None:
        """Schedule one pod as the cluster would; the node it was bound to, or None."""
        self.clock.now += self.seconds_per_pod
        obj = pod_object(serial, pod, self.units)
        cpu, mem = pod_requests(obj)
        vnpu = int(obj["spec"]["containers"][0]["resources"]["requests"].get(RESOURCE_VNPU, 0))
        names = self.scheduler.feasible(cpu, mem, vnpu)
        scores: dict[str, int] = {}
        if vnpu or self.scheduler.profile.cpu_pods_to_extender:
            args: Any = {"Pod": obj, "Nodes": None, "NodeNames": names}
            names = self.service.filter(args)["NodeNames"] or []
            if len(names) > 1:
                groups = self.service.prioritize({"Pod": obj, "Nodes": None, "NodeNames": names})
                scores = {name: score for score, group in groups for name in group}
        if not names:
            return None
        node = self.scheduler.select(names, cpu, mem, scores)
        if vnpu and not await self._bind(obj, node):
            return None
        self.scheduler.assume(node, cpu, mem, vnpu)
        self._watch(obj, node)
        return node

    async def _bind(self, obj: dict[str, Any], node: str) -> bool:
        meta = obj["metadata"]
        result = await self.service.bind(
            {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
        )
        return not result["Error"]

    def _watch(self, obj: dict[str, Any], node: str) -> None:
        """The event the pod watch delivers once the pod is bound (with the extender's annotations, if any)."""
        meta = obj["metadata"]
        bound = {
            **obj,
            "metadata": {
                **meta,
                "annotations": {**meta["annotations"], **self.writer.annotations.get(meta["name"], {})},
            },
            "spec": {**obj["spec"], "nodeName": node},
            "status": {"phase": "Running"},
        }
        self.state.observe_pod(pod_facts(bound))


def replay_production(
    nodes: Sequence[NodeState],
    order: Sequence[TracePod],
    policy_name: str,
    seed: int,
    levels: Sequence[int],
    *,
    profile: SchedulerProfile,
    stats: ClusterStats | None = None,
    seconds_per_pod: float = SECONDS_PER_POD,
    units: int | None = None,
) -> ProductionOutcome:
    """Submit each pod once through the production path; record where it went and the unallocated share.
    ``units``: the cut of a card the extender and the Nodes use (default :func:`replay_units`)."""
    cut = units or replay_units(order)
    return asyncio.run(_replay(nodes, order, policy_name, seed, levels, profile, stats, seconds_per_pod, cut))


async def _replay(
    nodes: Sequence[NodeState],
    order: Sequence[TracePod],
    policy_name: str,
    seed: int,
    levels: Sequence[int],
    profile: SchedulerProfile,
    stats: ClusterStats | None,
    seconds_per_pod: float,
    units: int,
) -> ProductionOutcome:
    replay = ProductionReplay(
        nodes,
        policy_name,
        seed=seed,
        profile=profile,
        units=units,
        stats=stats,
        seconds_per_pod=seconds_per_pod,
    )
    capacity = UNITS * sum(len(n.cards) for n in nodes)
    pending = list(levels)
    unallocated: dict[int, float] = {}
    placements: list[str | None] = []
    arrived = allocated = failed = 0
    for serial, pod in enumerate(order):
        arrived += pod.milli
        node = await replay.place(serial, pod)
        placements.append(node)
        if node is None:
            failed += 1
        else:
            allocated += pod.milli
        while pending and arrived * 100 >= pending[0] * capacity:
            unallocated[pending.pop(0)] = 100.0 - 100.0 * allocated / capacity
        if serial % 256 == 0:
            await asyncio.sleep(0)  # let the background Events run
    await replay.service.drain()
    return ProductionOutcome(tuple(placements), unallocated, allocated, arrived, failed)
