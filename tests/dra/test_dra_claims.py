"""The pure core: an allocated ResourceClaim decoded into a PreparedClaim, hostile values refused by field."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from dra_fakes import CARDS, HBM_MIB, claim, node, result, vnpu_config
from hypothesis import given
from hypothesis import strategies as st

from flexnpu import names
from flexnpu.cards import Health
from flexnpu.containeredits import NodeLayout
from flexnpu.dra.core.cdi import cdi_device_id, cdi_spec
from flexnpu.dra.core.claims import parse_vnpu_config, prepare_claim
from flexnpu.dra.core.quantity import parse_quantity
from flexnpu.errors import ValidationError
from flexnpu.priority import Priority

RESULT0 = "status.allocation.devices.results[0]."


def refused(raw: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        prepare_claim(raw, node())
    return info.value


def test_fraction_decodes_units_memory_priority_and_pod() -> None:
    prepared = prepare_claim(claim(result(units="3", memory="16Gi", device="npu-5"), config=[vnpu_config()]), node())
    (device,) = prepared.devices
    assert (device.card_index, device.card_uuid, device.units, device.memory_mib) == (5, "card-5", 3, 16384)
    assert device.priority is Priority.HIGH
    assert device.registration_id == "dra.uid-1.npu.5"
    assert (prepared.entity, prepared.pod_uid) == ("default/p1", "uid-p1")


def test_absent_capacity_is_the_whole_card_and_other_drivers_are_skipped() -> None:
    other = {"request": "gpu", "driver": "gpu.example.com", "pool": "x", "device": "gpu-0"}
    prepared = prepare_claim(claim(other, result(device="npu-1")), node())
    (device,) = prepared.devices
    assert (device.units, device.memory_mib, device.priority) == (10, HBM_MIB, Priority.NORMAL)


def test_config_applies_to_its_requests_and_later_entries_win() -> None:
    raw = claim(
        result("a", "npu-0", units="2"),
        result("b/sub", "npu-1", units="2"),
        config=[vnpu_config("low"), vnpu_config("high", ["b"])],
    )
    a, b = prepare_claim(raw, node()).devices
    assert (a.priority, b.priority) == (Priority.LOW, Priority.HIGH)
    assert b.registration_id == "dra.uid-1.b.sub.1"


@pytest.mark.parametrize(
    ("consumed", "field"),
    [
        ({"units": "0"}, "units"),
        ({"units": "11"}, "units"),
        ({"units": "2.5"}, "units"),
        ({"units": "-1"}, "units"),
        ({"units": "NaN"}, "units"),
        ({"units": 3.0}, "units"),
        ({"units": "3", "memory": "1Ti"}, "memory"),
        ({"units": "3", "memory": "0"}, "memory"),
        ({"units": "3", "memory": "Infinity"}, "memory"),
    ],
)
def test_hostile_capacity_is_refused_naming_the_field(consumed: dict[str, Any], field: str) -> None:
    error = refused(claim(result(**consumed)))
    assert error.field == f"{RESULT0}consumedCapacity.{field}"
    assert error.value == consumed[field]


def test_a_card_the_node_does_not_have_is_refused() -> None:
    error = refused(claim(result(device="npu-9", units="1")))
    assert (error.field, error.value) == (RESULT0 + "device", "npu-9")
    assert "npu-7" in error.reason


def test_an_unhealthy_card_is_refused() -> None:
    cards = [dataclasses.replace(c, health=Health.UNHEALTHY) if c.index == 3 else c for c in CARDS]
    with pytest.raises(ValidationError) as info:
        prepare_claim(claim(result(device="npu-3", units="1")), node(cards))
    assert (info.value.field, info.value.value, info.value.reason) == (
        RESULT0 + "device",
        "npu-3",
        "the card is Unhealthy",
    )


def test_another_pool_is_refused() -> None:
    raw = claim({**result(units="1"), "pool": "node-b"})
    assert refused(raw).field == RESULT0 + "pool"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"apiVersion": names.DRA_CONFIG_API_VERSION, "kind": names.DRA_CONFIG_KIND, "weight": 3}, "weight"),
        ({"apiVersion": "v2", "kind": names.DRA_CONFIG_KIND}, "apiVersion"),
        ({"apiVersion": names.DRA_CONFIG_API_VERSION, "kind": "Other"}, "kind"),
        ({"apiVersion": names.DRA_CONFIG_API_VERSION, "kind": names.DRA_CONFIG_KIND, "priority": "urgent"}, "priority"),
    ],
)
def test_malformed_opaque_config_is_refused(params: dict[str, object], field: str) -> None:
    entry = {"opaque": {"driver": names.DRA_DRIVER, "parameters": params}}
    error = refused(claim(result(units="1"), config=[entry]))
    assert error.field == f"status.allocation.devices.config[0].opaque.parameters.{field}"


def test_non_mapping_config_and_missing_pod_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_vnpu_config(["priority", "high"])
    raw = claim(result(units="1"))
    raw["status"]["reservedFor"] = []
    assert refused(raw).field == "status.reservedFor"
    raw["status"].pop("allocation")
    assert refused(raw).field == "status.allocation"


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=12), st.none(), st.booleans()))
def test_any_units_value_is_accepted_only_in_range(value: object) -> None:
    raw = claim(result(units=value))
    try:
        device = prepare_claim(raw, node()).devices[0]
    except ValidationError as exc:
        assert exc.field == RESULT0 + "consumedCapacity.units"
        return
    assert 1 <= device.units <= 10
    assert parse_quantity(value, "units") == device.units


@given(st.text(max_size=20), st.integers(min_value=-(2**70), max_value=2**70))
def test_any_memory_value_is_accepted_only_within_hbm(text: str, number: int) -> None:
    for value in (text, number, f"{number}Mi"):
        try:
            device = prepare_claim(claim(result(units="1", memory=value)), node()).devices[0]
        except ValidationError as exc:
            assert exc.field == RESULT0 + "consumedCapacity.memory"
            continue
        assert 1 <= device.memory_mib <= HBM_MIB


def test_cdi_spec_carries_the_device_plugins_container_edits() -> None:
    prepared = prepare_claim(claim(result(units="3", memory="16Gi", device="npu-2"), config=[vnpu_config()]), node())
    spec = cdi_spec(prepared, NodeLayout(units_per_card=10, use_cdi=True))
    assert spec["kind"] == names.DRA_CDI_KIND
    (device,) = spec["devices"]
    assert f"{names.DRA_CDI_KIND}={device['name']}" == cdi_device_id("uid-1", "npu")
    edits = device["containerEdits"]
    env = dict(e.split("=", 1) for e in edits["env"])
    assert env[names.ENV_ASCEND_VISIBLE_DEVICES] == "2"
    assert env[names.ENV_ASCEND_RT_VISIBLE_DEVICES] == "0"
    assert (env[names.ENV_UNITS], env[names.ENV_MEMORY_MIB], env[names.ENV_PRIORITY]) == ("3", "16384", "high")
    assert env[names.ENV_ID] == "dra.uid-1.npu.2"
    nodes = {d["path"] for d in edits["deviceNodes"]}
    assert nodes == {"/dev/davinci2", *names.ASCEND_DEVICE_NODES}
    mounts = {m["containerPath"]: m["options"] for m in edits["mounts"]}
    assert set(names.ASCEND_DRIVER_MOUNTS) <= set(mounts)
    assert names.PRELOAD_POD_FILE in mounts and "ro" in mounts[names.PRELOAD_POD_FILE]


def test_two_whole_cards_of_one_request_share_one_cdi_device() -> None:
    prepared = prepare_claim(claim(result(device="npu-4"), result(device="npu-5")), node())
    (device,) = cdi_spec(prepared, NodeLayout(units_per_card=10))["devices"]
    env = dict(e.split("=", 1) for e in device["containerEdits"]["env"])
    assert (env[names.ENV_ASCEND_VISIBLE_DEVICES], env[names.ENV_ASCEND_RT_VISIBLE_DEVICES]) == ("4,5", "0,1")
    assert len({d.registration_id for d in prepared.devices}) == 2


def test_the_registrations_own_slot_is_mounted_read_write_over_the_read_only_shim_directory() -> None:
    """libflexnpu maps its slot read-write (memory account, want, usage): under the read-only shim directory alone
    it would run ungated. Only its own slot is writable, no other pod's."""
    prepared = prepare_claim(claim(result(units="3", memory="16Gi", device="npu-2")), node())
    layout = NodeLayout(units_per_card=10, shim_socket_dir="/run/flexnpu-host", slot_mount=True)
    (device,) = cdi_spec(prepared, layout)["devices"]
    mounts = {m["containerPath"]: m for m in device["containerEdits"]["mounts"]}
    slot = names.slot_file(prepared.devices[0].registration_id)
    assert "ro" in mounts[names.SHIM_SOCKET_DIR]["options"]
    own = mounts[f"{names.SHIM_SOCKET_DIR}/{slot}"]
    assert own["hostPath"] == f"/run/flexnpu-host/{slot}" and "ro" not in own["options"]
    paths = list(mounts)
    assert paths.index(names.SHIM_SOCKET_DIR) < paths.index(f"{names.SHIM_SOCKET_DIR}/{slot}")
    assert not any(p.endswith(".shm") for p in mounts if p != f"{names.SHIM_SOCKET_DIR}/{slot}")
    without = cdi_spec(prepared, NodeLayout(units_per_card=10))["devices"][0]["containerEdits"]["mounts"]
    assert not any(m["containerPath"].endswith(".shm") for m in without)
