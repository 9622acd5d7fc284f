"""The published FGD scheduler, re-implemented line by line as a benchmark baseline (not a product policy).

The FGD paper's artifact, hkust-adsl/kubernetes-scheduler-simulator (commit 8f3d641), places each pod with
kube-scheduler v1.20.5 (a fork vendored as ``github.com/mental2008/kubernetes v1.20.5-minor``) running one score
plugin, ``FGDScore`` (weight 1000), behind the default filters and its ``Open-Gpu-Share`` filter. What decides a
placement there, and how this module mirrors it:

- Typical pods (``pkg/utils/frag.go`` ``GetTypicalPods``, config from ``scripts/generate_config_and_run.py``:
  ``isInvolvedCpuPods: true``, ``podPopularityThreshold: 95``, ``podIncreaseStep: 1``, ``gpuResWeight: 0``).
  Built once from the original pod list (``pkg/simulator/core.go`` calls ``SetTypicalPods`` before the list is
  inflated to 130%). A pod's key is ``PodResource`` = (CPU milli, GPU milli per card, GPU count, GPU type
  string); CPU-only pods count. Keys are sorted by decreasing count, equal counts by the key in decreasing order
  (``sort.Reverse`` over ``TargetPodList.Less``), and taken one at a time while their cumulated count is below
  95% of all pods; the kept weights are count / total renormalised by the kept share. :func:`typical_pods`.
- Fragmentation of a node (``frag.go`` ``NodeGpuShareFragAmountScore``): per typical pod, weighted by its
  frequency, the node's free GPU milli (sum over ALL its cards) counts as fragment unless the pod would fit
  (``GetNodePodFrag`` "Q3"): a CPU-only typical pod never fits in this sense (``XL``/``XR``: all free GPU
  counts), a pod whose GPU type the node lacks neither (``NoAccess``), a GPU pod fits when at least GPU-count
  cards each have the per-card milli free and the node's free CPU covers its CPU; then only the cards with less
  free than the per-card milli count. Memory plays no part. The amounts go into seven bins in typical-pod order
  and six of them are summed, as the Go code does (:func:`fragmentation`), so float rounding is the same.
- The score (``pkg/simulator/plugin/fgd_score.go`` ``calculateGpuShareFragExtendScore``):
  ``int64(sigmoid((frag_before - frag_after) / 1000) * 100)``, truncated, no normalisation (the plugin has no
  ScoreExtensions). A share pod (one card, < 1000 milli) is tried on every card with room, in index order, with
  the node's free CPU reduced by its CPU; the best score wins and the first card reaching it is the card.
  Other pods (whole cards, CPU-only) are scored on ``NodeResource.Sub`` (``pkg/type/resource.go``: CPU, then
  the least sufficient cards; a node that cannot take it is left unchanged) and get the first fully free cards
  by index (``AllocateExclusiveGpuId``). The Reserve step picks the card with the same function
  (``allocateGpuIdBasedOnFGDScore``: ``gpuSelMethod`` is FGDScore when the max-weight plugin is FGD and
  ``dimExtMethod`` is not merge). :func:`fgd_score`.
- The node (``vendor/k8s.io/kubernetes/pkg/scheduler/core/generic_scheduler.go`` ``selectHost``, patched in the
  fork): the highest score, ties to the lexicographically smallest node name ("for reproducibility"), not at
  random; ``percentageOfNodesToScore: 100``, so every feasible node is scored; the default score plugins are all
  disabled in the profile. With openb's names (``openb-node-0000``...) ties go to the first node of the list.
- Filters: ``Open-Gpu-Share`` (GPU type, enough cards with room) and kube-scheduler's NodeResourcesFit (CPU and
  memory; ``pods: 1001`` per node never binds). The replay's own filter (the placement core's ``fit_node``, CPU,
  memory, card models and room) decides the same; this module only ranks the nodes that fit.
- The replay loop (``pkg/simulator/simulator.go`` ``SchedulePods``, ``TunePodsByNodeTotalResource``,
  ``experiments/analysis/merge_alloc_discrete.py``): each pod once, arrived GPU milli counts failed pods,
  allocation read where the arrived share rounds to X%; :mod:`flexnpu.bench.placement` has it.

Known deviation: a pod's GPU type here is its sorted set of models, so ``V100M16|V100M32|V100M32`` (9 pods of
gpuspec10, 17 of gpuspec20) counts as ``V100M16|V100M32``; the published code keeps the two strings apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from flexnpu.extender.core.fit import NodeFit
from flexnpu.extender.core.model import NodeState, PodDemand

MILLI: Final = 1000
MAX_NODE_SCORE: Final = 100
POPULARITY_THRESHOLD: Final = 95  # percent of pods the typical ones cover
# FragRatioDataMap bins: q1 lack both, q2 lack GPU, q3 satisfied, q4 lack CPU, xl, xr, no access.
Q1, Q2, Q3, Q4, XL, XR, NO_ACCESS = range(7)
BINS: Final = 7
_CACHE_LIMIT: Final = 1_000_000


@dataclass(frozen=True, order=True)
class PodResource:
    """The published key of a pod: CPU milli, GPU milli on each card it takes, GPU count, GPU type string."""

    milli_cpu: int
    milli_gpu: int
    gpu_number: int
    gpu_type: str = ""

    @property
    def is_share(self) -> bool:
        return self.gpu_number == 1 and self.milli_gpu < MILLI

    def allowed_on(self, node_type: str) -> bool:
        """``IsNodeAccessibleToPodByType``: any listed type equal to the node's (a node without cards has none)."""
        wanted = [t for t in self.gpu_type.split("|") if t]
        if not wanted:
            return True
        return bool(node_type) and node_type in wanted


@dataclass(frozen=True)
class TypicalPod:
    pod: PodResource
    weight: float


@dataclass(frozen=True)
class NodeResource:
    """What the published plugins see of a node: its GPU type, free CPU milli and free milli of each card."""

    gpu_type: str
    cpu_left: int
    gpu_left: tuple[int, ...]

    def sub(self, pod: PodResource) -> NodeResource:
        """``NodeResource.Sub``: CPU, then the pod's cards from the least free sufficient ones; unchanged when
        the CPU or the card count is short (the Go code returns its untouched copy with the error)."""
        if self.cpu_left < pod.milli_cpu or len(self.gpu_left) < pod.gpu_number:
            return self
        left = list(self.gpu_left)
        wanted = pod.gpu_number
        for i in sorted(range(len(left)), key=lambda i: left[i]):
            if wanted <= 0:
                break
            if pod.milli_gpu <= left[i]:
                left[i] -= pod.milli_gpu
                wanted -= 1
        return NodeResource(self.gpu_type, self.cpu_left - pod.milli_cpu, tuple(left))


def pod_resource(demand: PodDemand, units_per_card: int = MILLI) -> PodResource:
    """The published key of a demand (units of a card cut into ``units_per_card`` read as thousandths)."""
    request = demand.request
    gpu_type = "|".join(sorted(demand.models))
    if request.units == 0:
        return PodResource(demand.cpu_milli, 0, 0, gpu_type)
    if request.is_fraction:
        return PodResource(demand.cpu_milli, request.units * MILLI // units_per_card, 1, gpu_type)
    return PodResource(demand.cpu_milli, MILLI, request.whole_cards, gpu_type)


def node_resource(node: NodeState) -> NodeResource:
    scale = MILLI / node.units_per_card
    left = tuple(round(c.units_free * scale) if c.healthy else 0 for c in node.cards)
    model = node.cards[0].model if node.cards else ""
    return NodeResource(model, node.cpu_milli_free, left)


def typical_pods(pods: Iterable[PodResource], threshold: int = POPULARITY_THRESHOLD) -> tuple[TypicalPod, ...]:
    """``GetTypicalPods``: the most frequent keys covering ``threshold`` percent of the pods, weights summing to 1."""
    counts = Counter(pods)
    total = float(sum(counts.values()))
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    expected = float(threshold) * total / 100.0
    kept: list[tuple[PodResource, float]] = []
    cumulated = 0.0
    while cumulated < expected and len(kept) < len(ranked):
        key, count = ranked[len(kept)]
        cumulated += count
        kept.append((key, count / total))
    if len(kept) == len(ranked):
        return tuple(TypicalPod(key, share) for key, share in kept)
    return tuple(TypicalPod(key, share / (cumulated / total)) for key, share in kept)


def fragmentation(node: NodeResource, typical: Sequence[TypicalPod]) -> float:
    """``NodeGpuShareFragAmountScore``: the node's free GPU milli that the typical pods, weighted, cannot use."""
    bins = [0.0] * BINS
    total = sum(node.gpu_left)
    for entry in typical:
        pod, weight = entry.pod, entry.weight
        kind = _frag_kind(node, pod)
        if kind == Q3:
            fragment = sum(left for left in node.gpu_left if left < pod.milli_gpu)
            bins[Q2] += weight * float(fragment)
            bins[Q3] += weight * float(total - fragment)
        else:
            bins[kind] += weight * float(total)
    out = 0.0
    for i in range(BINS):
        if i != Q3:
            out += bins[i]
    return out


def _frag_kind(node: NodeResource, pod: PodResource) -> int:
    """``GetNodePodFrag``."""
    cpu_ok = node.cpu_left >= pod.milli_cpu
    if pod.milli_gpu == 0:
        return XL if cpu_ok else XR
    if not pod.allowed_on(node.gpu_type):
        return NO_ACCESS
    fits = sum(1 for left in node.gpu_left if left >= pod.milli_gpu) >= pod.gpu_number
    if fits:
        return Q3 if cpu_ok else Q4
    return Q2 if cpu_ok else Q1


def sigmoid_score(frag_before: float, frag_after: float) -> int:
    """``int64(sigmoid((before - after) / 1000) * MaxNodeScore)``: the fragmentation drop, in cards, squashed."""
    return sigmoid_percent((frag_before - frag_after) / 1000)


def sigmoid_percent(x: float) -> int:
    """``int64(sigmoid(x) * 100)``, truncated; Go's Exp overflows to +Inf, giving 0."""
    if -x > 709:
        return 0
    return int(1.0 / (1.0 + math.exp(-x)) * MAX_NODE_SCORE)


def fgd_score(node: NodeResource, pod: PodResource, typical: Sequence[TypicalPod]) -> tuple[int, tuple[int, ...]]:
    """The published FGD score of placing ``pod`` on ``node`` and the card positions it would take there."""
    before = fragmentation(node, typical)
    if not pod.is_share:
        after = fragmentation(node.sub(pod), typical)
        return sigmoid_score(before, after), exclusive_cards(node, pod)
    best, card = 0, -1
    tried: dict[int, int] = {}
    for i, left in enumerate(node.gpu_left):
        if left < pod.milli_gpu:
            continue
        if left not in tried:
            taken = list(node.gpu_left)
            taken[i] -= pod.milli_gpu
            after_node = NodeResource(node.gpu_type, node.cpu_left - pod.milli_cpu, tuple(taken))
            tried[left] = sigmoid_score(before, fragmentation(after_node, typical))
        if card < 0 or tried[left] > best:
            best, card = tried[left], i
    return best, ((card,) if card >= 0 else ())


def exclusive_cards(node: NodeResource, pod: PodResource) -> tuple[int, ...]:
    """``AllocateExclusiveGpuId``: the first fully free cards, by index, for a pod of whole cards."""
    free = [i for i, left in enumerate(node.gpu_left) if left == MILLI]
    return tuple(free[: pod.gpu_number]) if pod.gpu_number else ()


def select_host(scores: dict[str, int]) -> str:
    """The fork's ``selectHost``: the highest score, ties to the smallest node name."""
    top = max(scores.values())
    return min(name for name, score in scores.items() if score == top)


class PublishedFgd:
    """The published FGD scheduler over the replay's nodes: ``place`` ranks the fitting nodes and picks the cards.

    Scores are remembered per (node resources, pod key): the score ignores card order and node names, so nodes
    in the same state share one computation.
    """

    def __init__(self, workload: Iterable[PodDemand], units_per_card: int = MILLI) -> None:
        self.units_per_card = units_per_card
        self.typical = typical_pods(pod_resource(d, units_per_card) for d in workload)
        self._scores: dict[tuple[NodeResource, PodResource], int] = {}
        self._nodes: dict[str, tuple[NodeState, NodeResource, NodeResource]] = {}

    def place(self, demand: PodDemand, fits: Sequence[NodeFit]) -> tuple[str, tuple[int, ...]]:
        """The chosen node's name and the positions of its cards the pod takes."""
        pod = pod_resource(demand, self.units_per_card)
        scores = {fit.name: self._score(fit.node, pod) for fit in fits}
        name = select_host(scores)
        node = next(fit.node for fit in fits if fit.name == name)
        return name, fgd_score(self._resources(node)[0], pod, self.typical)[1]

    def _score(self, node: NodeState, pod: PodResource) -> int:
        key = (self._resources(node)[1], pod)
        score = self._scores.get(key)
        if score is None:
            if len(self._scores) > _CACHE_LIMIT:
                self._scores.clear()
            score = self._scores[key] = fgd_score(key[0], pod, self.typical)[0]
        return score

    def _resources(self, node: NodeState) -> tuple[NodeResource, NodeResource]:
        """The node's resources in card order, and the same sorted (the key its score is remembered by)."""
        entry = self._nodes.get(node.name)
        if entry is None or entry[0] is not node:
            res = node_resource(node)
            entry = self._nodes[node.name] = (node, res, replace(res, gpu_left=tuple(sorted(res.gpu_left))))
        return entry[1], entry[2]
