"""The card model: which 910B variants exist, and the typed value every component uses for one card."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from flexnpu.errors import ValidationError


@dataclass(frozen=True)
class CardModel:
    """A 910B variant: its name, AI-core count and HBM size."""

    name: str
    aicores: int
    hbm_mib: int


CARD_MODELS: Final[dict[str, CardModel]] = {
    m.name: m
    for m in (
        CardModel("910B1", aicores=24, hbm_mib=65536),
        CardModel("910B2", aicores=24, hbm_mib=65536),
        CardModel("910B3", aicores=20, hbm_mib=65536),
        CardModel("910B4", aicores=20, hbm_mib=32768),
    )
}


def card_model(name: str, field: str = "model") -> CardModel:
    """The model called ``name``; a ValidationError naming ``field`` when there is none."""
    try:
        return CARD_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(CARD_MODELS))
        raise ValidationError(field, name, f"unknown card model (known: {known})") from None


class Health(enum.StrEnum):
    """Card health as kubelet understands it."""

    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class Card:
    """One physical card on one node."""

    uuid: str
    index: int
    model: str
    aicores: int
    hbm_mib: int
    chip: int = 0
    health: Health = Health.HEALTHY
    bus_id: str = ""

    @property
    def healthy(self) -> bool:
        return self.health is Health.HEALTHY

    @classmethod
    def of_model(cls, model: str, index: int, uuid: str, **extra: object) -> Card:
        """A card whose cores and HBM are those of its model."""
        spec = card_model(model)
        return cls(uuid=uuid, index=index, model=spec.name, aicores=spec.aicores, hbm_mib=spec.hbm_mib, **extra)  # type: ignore[arg-type]


def hccs_ring(index: int) -> int:
    """The HCCS ring a card sits on in an 8-card 910B server (indices 0-3 and 4-7)."""
    return index // 4
