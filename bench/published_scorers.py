"""The published simulator's node scores for FGD and Best-fit, so that our baselines compare like for like.

The published simulator (hkust-adsl/kubernetes-scheduler-simulator, the FGD paper's artifact) scores a node as a
kube-scheduler score plugin does: a whole number in 0..100, the node with the highest score wins, ties drawn at
random. Its rounding is coarse, so ties are frequent and the random draw is part of the algorithm:

- FGD: ``int(100 * sigmoid((frag_before - frag_after) / 1000))`` with fragmentation in thousandths of a card, i.e.
  ``int(100 * sigmoid(-gradient))`` with the gradient in cards (our FGD cost); no normalisation.
- Best-fit: ``int(100 * (1 - (0.5 * cpu_left / 128000 + 0.5 * gpu_left / 8000)))`` with what the node has left
  after the pod (CPU in millicores, cards in thousandths; 128,000 and 8,000 are the simulator's ``MaxSpec``
  constants), then min-max normalised to 0..100 in integers (which merges close scores into ties).

The card(s) within the chosen node are those our policy of the same name picks. These are benchmark baselines,
not placement policies of the product.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from flexnpu.extender.core.fit import NodeFit
from flexnpu.extender.core.model import PodDemand
from flexnpu.extender.core.placement import EvaluationMemo, evaluate
from flexnpu.extender.core.stats import ClusterStats

MAX_NODE_SCORE: Final = 100
MAX_SPEC_CPU: Final = 128_000
MAX_SPEC_GPU: Final = 8_000
# Benchmark name -> the core policy whose cost (FGD) or card choice it reuses.
PUBLISHED: Final = {"fgd-published": "fgd", "bestfit-published": "bestfit"}


def published_scores(
    name: str, demand: PodDemand, fits: Sequence[NodeFit], stats: ClusterStats, memo: EvaluationMemo, milli: int
) -> dict[str, int]:
    """Node name -> the published plugin's (normalised) score, for ``fgd-published`` or ``bestfit-published``."""
    if name == "fgd-published":
        return {f.name: _fgd(evaluate(demand, f, "fgd", stats, memo).cost) for f in fits}
    return _normalised({f.name: _bestfit(f, demand, milli) for f in fits})


def _fgd(gradient_cards: float) -> int:
    x = -gradient_cards
    sigmoid = 1.0 / (1.0 + math.exp(-x)) if x >= -700 else 0.0
    return int(sigmoid * MAX_NODE_SCORE)


def _bestfit(fit: NodeFit, demand: PodDemand, milli: int) -> int:
    node = fit.node
    scale = 1000 / node.units_per_card
    gpu_left = sum(c.units_free for c in node.cards) * scale - milli
    cpu_left = node.cpu_milli_free - demand.cpu_milli
    return int((1.0 - (0.5 * cpu_left / MAX_SPEC_CPU + 0.5 * gpu_left / MAX_SPEC_GPU)) * MAX_NODE_SCORE)


def _normalised(scores: dict[str, int]) -> dict[str, int]:
    if not scores:
        return scores
    lowest, highest = min(scores.values()), max(scores.values())
    span = highest - lowest
    if span == 0:
        return dict.fromkeys(scores, 0)
    return {name: (score - lowest) * MAX_NODE_SCORE // span for name, score in scores.items()}
