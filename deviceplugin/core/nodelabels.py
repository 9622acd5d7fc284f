"""The labels the device plugin puts on its node: card model, card count and units per card.

Pure: :func:`node_labels` maps the discovered cards and the unit configuration to a label patch
(``{key: value}``, ``None`` removing a label), which :mod:`flexnpu.deviceplugin.adapters.nodelabels` writes.
Workloads and node selectors can then pick nodes by what they carry (``flexnpu.io/npu-model=910B3``) without a
hand-applied label. Card models come from npu-smi or an inventory file, so they are hostile: a model that is not a
valid label value (at most 63 characters of ``[A-Za-z0-9._-]``, alphanumeric at both ends) removes the model
label instead of failing the patch, and so does a node whose cards are of several models (a selector on one model
must not match a node that may place the pod on another). The count is of every discovered card, healthy or not:
a label must not flap with card health, which the extender and kubelet already track.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from flexnpu.cards import Card
from flexnpu.names import DOMAIN
from flexnpu.units import UnitsConfig

LABEL_NPU_MODEL: Final = f"{DOMAIN}/npu-model"
LABEL_NPU_COUNT: Final = f"{DOMAIN}/npu-count"
LABEL_UNITS_PER_CARD: Final = f"{DOMAIN}/vnpu-units-per-card"
NODE_LABELS: Final = (LABEL_NPU_MODEL, LABEL_NPU_COUNT, LABEL_UNITS_PER_CARD)

_LABEL_VALUE: Final = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def is_label_value(value: str) -> bool:
    """Whether Kubernetes accepts ``value`` as a label value (empty included)."""
    return _LABEL_VALUE.fullmatch(value) is not None


def node_labels(cards: Iterable[Card], units: UnitsConfig) -> dict[str, str | None]:
    """The node's flexnpu labels for these cards; ``None`` for a label to remove."""
    found = tuple(cards)
    models = {card.model for card in found}
    model = next(iter(models)) if len(models) == 1 else None
    return {
        LABEL_NPU_MODEL: model if model and is_label_value(model) else None,
        LABEL_NPU_COUNT: str(len(found)),
        LABEL_UNITS_PER_CARD: str(units.units_per_card),
    }
