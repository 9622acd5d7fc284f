"""Units, requests, memory defaults and device IDs (DESIGN.md section 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flexnpu.errors import ValidationError
from flexnpu.names import RESOURCE_VNPU, RESOURCE_VNPU_MEMORY
from flexnpu.units import (
    UnitsConfig,
    VnpuRequest,
    card_uuid_from_bus_id,
    default_memory_mib,
    device_id,
    parse_device_id,
    parse_vnpu_request,
)

U10 = UnitsConfig()


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (1, VnpuRequest(units=1, whole_cards=0)),
        (3, VnpuRequest(units=3, whole_cards=0)),
        (10, VnpuRequest(units=10, whole_cards=0)),
        (20, VnpuRequest(units=20, whole_cards=2)),
        (80, VnpuRequest(units=80, whole_cards=8)),
        ("4", VnpuRequest(units=4, whole_cards=0)),
    ],
)
def test_valid_requests(units: object, expected: VnpuRequest) -> None:
    assert parse_vnpu_request(units, U10) == expected


@pytest.mark.parametrize("units", [0, -1, 11, 15, 25, 1.5, True, "x", None])
def test_invalid_requests_name_the_resource_and_value(units: object) -> None:
    with pytest.raises(ValidationError) as info:
        parse_vnpu_request(units, U10)
    assert info.value.field == RESOURCE_VNPU
    assert repr(units) in str(info.value) or str(units) in str(info.value)


def test_memory_request_is_validated() -> None:
    assert parse_vnpu_request(3, U10, 16384).memory_mib == 16384
    with pytest.raises(ValidationError) as info:
        parse_vnpu_request(3, U10, -5)
    assert info.value.field == RESOURCE_VNPU_MEMORY


@given(u=st.integers(1, 1000), per_card=st.integers(1, 1000))
def test_any_accepted_request_is_a_fraction_or_whole_cards(u: int, per_card: int) -> None:
    config = UnitsConfig(units_per_card=per_card)
    try:
        request = parse_vnpu_request(u, config)
    except ValidationError:
        assert u > per_card and u % per_card != 0
        return
    if request.is_fraction:
        assert 1 <= request.units <= per_card
    else:
        assert request.whole_cards * per_card == u


@pytest.mark.parametrize(
    ("units", "memory", "hbm", "expected"),
    [
        (3, None, 65536, 19660),
        (5, None, 32768, 16384),
        (10, None, 65536, 65536),
        (20, None, 65536, 65536),
        (3, 16384, 65536, 16384),
    ],
)
def test_default_memory(units: int, memory: int | None, hbm: int, expected: int) -> None:
    request = parse_vnpu_request(units, U10, memory)
    assert default_memory_mib(request, hbm, 10) == expected


def test_device_ids_round_trip_and_fit_63_chars() -> None:
    uuid = card_uuid_from_bus_id("0000:C1:00.0")
    assert uuid == "npu-0000-c1-00-0"
    did = device_id(uuid, 7)
    assert parse_device_id(did) == (uuid, 7)
    with pytest.raises(ValidationError):
        device_id("x" * 70, 1)
    with pytest.raises(ValidationError):
        parse_device_id("no-index-")


@pytest.mark.parametrize(("per_card", "factor"), [(0, 1.0), (1001, 1.0), (10, 0.5), (10, 17.0)])
def test_units_config_bounds(per_card: int, factor: float) -> None:
    with pytest.raises(ValidationError):
        UnitsConfig(units_per_card=per_card, oversubscription=factor)


def test_oversubscription_multiplies_advertised_units() -> None:
    assert UnitsConfig(10, 1.5).advertised_per_card == 15
    assert UnitsConfig(10).advertised_per_card == 10
