"""The published simulator's FGD and Best-fit schedulers, so that our baselines compare like for like.

The published simulator (hkust-adsl/kubernetes-scheduler-simulator, the FGD paper's artifact) runs one score
plugin per experiment in kube-scheduler v1.20.5 as patched by its vendored fork: a whole number per node, the
highest wins, ties to the lexicographically smallest node name (``selectHost`` in
``vendor/k8s.io/kubernetes/pkg/scheduler/core/generic_scheduler.go``; not at random), every feasible node scored.
Each baseline places cards with the simulator's own allocator, not with our policies:

- ``fgd-published``: :mod:`flexnpu.bench.published_fgd` (typical pods, fragmentation, sigmoid score, FGD's card).
- ``bestfit-published``: ``pkg/simulator/plugin/best_fit_score.go``: ``int64((1 - (0.5 * cpu_left / 128000 +
  0.5 * gpu_left / 8000)) * 100)`` with what the node has left after the pod (CPU in millicores, cards in
  thousandths; 128,000 and 8,000 are ``MaxSpecCpu`` / ``MaxSpecGpu``), then min-max normalised to 0..100 in
  integers (``plugin_utils.go`` ``NormalizeScore``, which merges close scores into ties); the card is the
  tightest one with room, first by index (``allocateGpuIdBasedOnBestFit``, ``gpuSelMethod: best``), whole
  cards the first free ones (``AllocateExclusiveGpuId``).

These are benchmark baselines, not placement policies of the product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Protocol

from flexnpu.annotations import CardAssignment
from flexnpu.bench.published_fgd import (
    MILLI,
    NodeResource,
    PodResource,
    PublishedFgd,
    exclusive_cards,
    node_resource,
    pod_resource,
    select_host,
    sigmoid_percent,
)
from flexnpu.extender.core.fit import NodeFit
from flexnpu.extender.core.model import PodDemand

MAX_NODE_SCORE: Final = 100
MAX_SPEC_CPU: Final = 128_000
MAX_SPEC_GPU: Final = 8_000
# Benchmark name -> the core policy whose name the benchmark validates and builds (unused) stats for.
PUBLISHED: Final = {"fgd-published": "fgd", "bestfit-published": "bestfit"}


class Placer(Protocol):
    def place(self, demand: PodDemand, fits: Sequence[NodeFit]) -> tuple[str, tuple[int, ...]]:
        """The chosen node's name and the positions of its cards the pod takes (none for a CPU-only pod)."""
        ...


class PublishedBestFit:
    """The published Best-fit scheduler over the replay's nodes."""

    def __init__(self, units_per_card: int = MILLI) -> None:
        self.units_per_card = units_per_card

    def place(self, demand: PodDemand, fits: Sequence[NodeFit]) -> tuple[str, tuple[int, ...]]:
        pod = pod_resource(demand, self.units_per_card)
        nodes = {fit.name: node_resource(fit.node) for fit in fits}
        name = select_host(_normalised({n: bestfit_score(res, pod) for n, res in nodes.items()}))
        return name, bestfit_cards(nodes[name], pod)


def published_placer(name: str, workload: Iterable[PodDemand], units_per_card: int = MILLI) -> Placer:
    """The published scheduler ``name`` (a key of :data:`PUBLISHED`); FGD learns its typical pods from
    ``workload`` (the original pod list, before inflation, as the simulator does)."""
    if name == "fgd-published":
        return PublishedFgd(workload, units_per_card)
    if name == "bestfit-published":
        return PublishedBestFit(units_per_card)
    raise KeyError(name)


def assignments(demand: PodDemand, fit: NodeFit, positions: Sequence[int]) -> tuple[CardAssignment, ...]:
    """The card assignments of a placement on ``positions`` of the fitting node."""
    node = fit.node
    return tuple(
        CardAssignment(
            uuid=node.cards[p].uuid,
            index=node.cards[p].index,
            units=fit.units,
            memory_mib=demand.memory_mib(node.cards[p], node.units_per_card),
        )
        for p in positions
    )


def bestfit_score(node: NodeResource, pod: PodResource) -> int:
    """``getBestFitScore``: 100 for a node the pod fills exactly, less the more CPU and GPU it leaves."""
    score = 0.0
    score += (node.cpu_left - pod.milli_cpu) / MAX_SPEC_CPU * 0.5
    score += (sum(node.gpu_left) - pod.milli_gpu * pod.gpu_number) / MAX_SPEC_GPU * 0.5
    return int((1.0 - score) * MAX_NODE_SCORE)


def bestfit_cards(node: NodeResource, pod: PodResource) -> tuple[int, ...]:
    """``allocateGpuIdBasedOnBestFit``: the tightest card with room (first by index) for a share pod."""
    if not pod.is_share:
        return exclusive_cards(node, pod)
    fitting = [i for i, left in enumerate(node.gpu_left) if left >= pod.milli_gpu]
    return (min(fitting, key=lambda i: (node.gpu_left[i], i)),) if fitting else ()


def _fgd(gradient_cards: float) -> int:
    """The FGD score of a placement that grows fragmentation by ``gradient_cards`` cards."""
    return sigmoid_percent(-gradient_cards)


def _bestfit(fit: NodeFit, demand: PodDemand, milli: int) -> int:
    """The Best-fit score of ``demand`` (``milli`` thousandths of a card in all) on the fitting node."""
    del milli  # the pod key carries it
    return bestfit_score(node_resource(fit.node), pod_resource(demand, fit.node.units_per_card))


def _normalised(scores: dict[str, int]) -> dict[str, int]:
    """``NormalizeScore``: min-max to 0..100 in integers; all 0 when every score is the same."""
    if not scores:
        return scores
    lowest, highest = min(scores.values()), max(scores.values())
    span = highest - lowest
    if span == 0:
        return dict.fromkeys(scores, 0)
    return {name: (score - lowest) * MAX_NODE_SCORE // span for name, score in scores.items()}
