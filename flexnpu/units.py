"""Units, requests and device IDs: the numbers every component agrees on (DESIGN.md section 3).

A request ``huawei.com/vnpu: u`` with U units per card means u/U of one card when 1 <= u <= U and k whole
cards when u = k*U. Anything else is rejected, never rounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from flexnpu.errors import ValidationError
from flexnpu.names import RESOURCE_VNPU, RESOURCE_VNPU_MEMORY

DEFAULT_UNITS_PER_CARD: Final = 10
MAX_UNITS_PER_CARD: Final = 1000
DEFAULT_OVERSUBSCRIPTION: Final = 1.0
MAX_DEVICE_ID_LENGTH: Final = 63


@dataclass(frozen=True)
class UnitsConfig:
    """How a card is cut: U units per card, advertised ``oversubscription`` times over."""

    units_per_card: int = DEFAULT_UNITS_PER_CARD
    oversubscription: float = DEFAULT_OVERSUBSCRIPTION

    def __post_init__(self) -> None:
        validate_units_per_card(self.units_per_card)
        validate_oversubscription(self.oversubscription)

    @property
    def advertised_per_card(self) -> int:
        """Units per card advertised to kubelet: floor(f * U)."""
        return int(self.oversubscription * self.units_per_card)


def validate_units_per_card(value: object, field: str = "units_per_card") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_UNITS_PER_CARD:
        raise ValidationError(field, value, f"must be an integer in 1..{MAX_UNITS_PER_CARD}")
    return value


def validate_oversubscription(value: object, field: str = "oversubscription") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1.0 <= float(value) <= 16.0:
        raise ValidationError(field, value, "must be a number in 1..16")
    return float(value)


@dataclass(frozen=True)
class VnpuRequest:
    """A validated request: ``units`` of one card (``whole_cards == 0``) or ``whole_cards`` cards."""

    units: int
    whole_cards: int
    memory_mib: int | None = None

    @property
    def is_fraction(self) -> bool:
        return self.whole_cards == 0

    @property
    def cards(self) -> int:
        """How many cards the request touches."""
        return max(1, self.whole_cards)

    def units_per_touched_card(self, units_per_card: int) -> int:
        return self.units if self.is_fraction else units_per_card


def parse_vnpu_request(units: object, config: UnitsConfig, memory_mib: object = None) -> VnpuRequest:
    """Validate a ``huawei.com/vnpu`` amount (and an optional ``huawei.com/vnpu-memory``)."""
    u = _positive_int(units, RESOURCE_VNPU)
    per_card = config.units_per_card
    if u <= per_card:
        request = VnpuRequest(units=u, whole_cards=0)
    elif u % per_card == 0:
        request = VnpuRequest(units=u, whole_cards=u // per_card)
    else:
        raise ValidationError(
            RESOURCE_VNPU,
            u,
            f"must be 1..{per_card} (a fraction of one card) or a multiple of {per_card} (whole cards)",
        )
    if memory_mib is None:
        return request
    return VnpuRequest(request.units, request.whole_cards, _positive_int(memory_mib, RESOURCE_VNPU_MEMORY))


def default_memory_mib(request: VnpuRequest, hbm_mib: int, units_per_card: int) -> int:
    """Memory per touched card: the request's own, else floor(u/U * HBM) for a fraction, all HBM for whole cards."""
    if request.memory_mib is not None:
        return request.memory_mib
    if request.is_fraction:
        return request.units * hbm_mib // units_per_card
    return hbm_mib


def _positive_int(value: object, field: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(field, value, "must be a positive integer")
    return value


_DEVICE_ID = re.compile(r"^(?P<uuid>[A-Za-z0-9][A-Za-z0-9._:-]*)-(?P<k>\d+)$")


def device_id(card_uuid: str, k: int) -> str:
    """The ID advertised to kubelet for unit ``k`` of a card: ``<card-uuid>-<k>``, at most 63 characters."""
    did = f"{card_uuid}-{k}"
    if len(did) > MAX_DEVICE_ID_LENGTH or not _DEVICE_ID.match(did):
        raise ValidationError("device_id", did, f"must match <card-uuid>-<k>, at most {MAX_DEVICE_ID_LENGTH} chars")
    return did


def parse_device_id(did: str) -> tuple[str, int]:
    """(card uuid, unit index) of an advertised device ID."""
    match = _DEVICE_ID.match(did)
    if match is None:
        raise ValidationError("device_id", did, "must match <card-uuid>-<k>")
    return match["uuid"], int(match["k"])


def card_uuid_from_bus_id(bus_id: str) -> str:
    """A stable, ID-safe card uuid from a PCI bus id (``0000:C1:00.0`` -> ``npu-0000-c1-00-0``)."""
    return "npu-" + re.sub(r"[^a-z0-9]+", "-", bus_id.lower()).strip("-")
