"""The node's ResourceSlices (resource.k8s.io/v1) as pure values, and the writes that bring the API to them.

One pool per node (named after the node), one slice in it, one device per healthy card, named ``npu-<index>``.
Every device has ``allowMultipleAllocations: true`` (KEP-5075 consumable capacity): the scheduler itself
records how much of a card each claim consumed. Its capacities:

- ``units``: U (units per card, times the oversubscription factor); request policy ``validRange`` 1..U in
  steps of 1, default U, so a claim that names no units takes the whole card;
- ``memory``: the card's HBM as a Quantity in ``Mi``; request policy ``validRange`` 1Mi..HBM in steps of 1Mi,
  default the whole HBM. So a claim that omits memory gets, and reserves, all of the card's memory: a fraction
  must say how much memory it wants (the examples do) or it keeps every other claim off the card. DESIGN.md's
  floor(u/U * HBM) cannot be expressed, since a request policy's default cannot depend on the units asked for;
  reserving everything fails closed (memory is never oversubscribed) where a smaller default would let a pod
  find out at run time.

Attributes (plain names, which the API qualifies with the driver's domain): ``model``, ``index``, ``uuid``,
``chip``, ``aicores``, ``hccsRing`` and ``health``. An unhealthy card is withdrawn from the slice (so ``health``
always reads ``Healthy`` there; it is published for selectors that want to say so); a node whose cards are all
unhealthy publishes an empty slice, so the pool stays visible with nothing to allocate.

:func:`plan` is the diff: the slices on the API against the wanted ones. Nothing is written when nothing
changed; on any change the pool generation is bumped past the highest one seen, on every slice of the pool.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from flexnpu import names
from flexnpu.cards import Card, Health, hccs_ring
from flexnpu.dra.core.quantity import parse_quantity
from flexnpu.errors import ValidationError
from flexnpu.units import UnitsConfig

API_VERSION: Final = "resource.k8s.io/v1"
KIND: Final = "ResourceSlice"
DRIVER: Final = names.DRA_DRIVER
CAPACITY_UNITS: Final = names.DRA_CAPACITY_UNITS
CAPACITY_MEMORY: Final = names.DRA_CAPACITY_MEMORY
# The attribute a claim's ``matchAttribute`` names (qualified: ``npu.flexnpu.io/hccsRing``) for cards on one ring.
ATTRIBUTE_HCCS_RING: Final = "hccsRing"
MAX_DEVICES_PER_SLICE: Final = 128
_MAX_NAME: Final = 253

Json = dict[str, Any]


def device_name(card: Card) -> str:
    """The device's name in the slice: ``npu-<index>``."""
    return f"{names.DRA_DEVICE_PREFIX}{card.index}"


def slice_name(node_name: str, driver: str = DRIVER) -> str:
    """The one slice of a node: ``<node>-<driver>`` (both DNS subdomains, so the name is one too)."""
    name = f"{node_name}-{driver}"
    if len(name) > _MAX_NAME:
        raise ValidationError("nodeName", node_name, f"too long for a slice name ({len(name)} > {_MAX_NAME})")
    return name


def check_cards(cards: Sequence[Card]) -> None:
    """Reject an inventory that cannot be published: none, duplicate index or uuid, no HBM, too many."""
    if not cards:
        raise ValidationError("cards", [], "the node has no card to publish")
    if len(cards) > MAX_DEVICES_PER_SLICE:
        raise ValidationError("cards", len(cards), f"at most {MAX_DEVICES_PER_SLICE} cards fit one slice")
    seen_index: set[int] = set()
    seen_uuid: set[str] = set()
    for card in cards:
        if card.index < 0 or card.index in seen_index:
            raise ValidationError("card.index", card.index, "must be unique and >= 0")
        if not card.uuid or card.uuid in seen_uuid:
            raise ValidationError("card.uuid", card.uuid, "must be unique and non-empty")
        if card.hbm_mib < 1:
            raise ValidationError(f"card[{card.index}].hbm_mib", card.hbm_mib, "must be at least 1 MiB")
        seen_index.add(card.index)
        seen_uuid.add(card.uuid)


def device(card: Card, units: UnitsConfig) -> Json:
    """One card as a resource.k8s.io/v1 Device."""
    per_card = units.advertised_per_card
    return {
        "name": device_name(card),
        "attributes": {
            "model": {"string": card.model},
            "index": {"int": card.index},
            "uuid": {"string": card.uuid},
            "chip": {"int": card.chip},
            "aicores": {"int": card.aicores},
            ATTRIBUTE_HCCS_RING: {"int": hccs_ring(card.index)},
            "health": {"string": card.health.value},
        },
        "capacity": {
            CAPACITY_UNITS: _capacity(str(per_card), "1", str(units.units_per_card), str(units.units_per_card)),
            CAPACITY_MEMORY: _capacity(f"{card.hbm_mib}Mi", "1Mi", f"{card.hbm_mib}Mi", f"{card.hbm_mib}Mi"),
        },
        "allowMultipleAllocations": True,
    }


def _capacity(value: str, step: str, maximum: str, default: str) -> Json:
    """A consumable capacity of ``step`` .. ``maximum`` in steps of ``step``, ``default`` when a claim omits it.

    With one step only (U = 1) the step is left out: the API server refuses a step when min + step passes the
    capacity, and the range 1..1 needs none.
    """
    valid_range = {"min": step, "max": maximum}
    if parse_quantity(maximum, "max") > parse_quantity(step, "step"):
        valid_range["step"] = step
    return {"value": value, "requestPolicy": {"default": default, "validRange": valid_range}}


def wanted_slices(
    cards: Sequence[Card], node_name: str, units: UnitsConfig, *, driver: str = DRIVER, generation: int = 1
) -> list[Json]:
    """The node's slices (one) for these cards, in pool generation ``generation``; unhealthy cards left out."""
    check_cards(cards)
    if not node_name:
        raise ValidationError("nodeName", node_name, "must not be empty")
    healthy = sorted((c for c in cards if c.health is Health.HEALTHY), key=lambda c: c.index)
    spec: Json = {
        "driver": driver,
        "nodeName": node_name,
        "pool": {"name": node_name, "generation": generation, "resourceSliceCount": 1},
        "devices": [device(c, units) for c in healthy],
    }
    return [
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": slice_name(node_name, driver)}, "spec": spec}
    ]


@dataclass(frozen=True)
class SlicePlan:
    """The writes that bring the API to the wanted slices: bodies to create and update, names to delete."""

    create: list[Json] = field(default_factory=list)
    update: list[Json] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def plan(existing: Sequence[Mapping[str, Any]], wanted: Sequence[Json]) -> SlicePlan:
    """The diff between the slices on the API (``existing``, raw JSON) and ``wanted`` (from :func:`wanted_slices`).

    Unchanged (same spec but the generation, same names): nothing. Otherwise every wanted slice is written with
    the pool generation one past the highest seen (an update carries the slice's resourceVersion, so a
    concurrent writer makes it fail rather than be overwritten) and every other slice is deleted.
    """
    current = {_name(s, i): s for i, s in enumerate(existing)}
    wanted_names = {w["metadata"]["name"] for w in wanted}
    stale = sorted(set(current) - wanted_names)
    if not stale and all(_same(current.get(w["metadata"]["name"]), w) for w in wanted):
        return SlicePlan()
    generation = max((_generation(s) for s in current.values()), default=0) + 1
    result = SlicePlan(delete=stale)
    for body in wanted:
        fresh = copy.deepcopy(body)
        fresh["spec"]["pool"]["generation"] = generation
        old = current.get(body["metadata"]["name"])
        if old is None:
            result.create.append(fresh)
        else:
            fresh["metadata"]["resourceVersion"] = _field(old, "metadata", "resourceVersion", default="")
            result.update.append(fresh)
    return result


def _same(old: Mapping[str, Any] | None, new: Json) -> bool:
    if old is None:
        return False
    return _comparable(old.get("spec")) == _comparable(new["spec"])


def _comparable(spec: object) -> object:
    """The spec without the pool generation, each capacity quantity as a number (the API server rewrites
    ``65536Mi`` as ``64Gi``)."""
    if not isinstance(spec, Mapping):
        return None
    pool = dict(spec.get("pool") or {})
    pool.pop("generation", None)
    devices = spec.get("devices")
    if isinstance(devices, list):
        devices = [_device_comparable(d) for d in devices]
    return {**spec, "pool": pool, "devices": devices or []}


def _device_comparable(device: object) -> object:
    if not isinstance(device, Mapping) or not isinstance(device.get("capacity"), Mapping):
        return device
    return {**device, "capacity": _quantities(device["capacity"])}


def _quantities(tree: object) -> object:
    if isinstance(tree, Mapping):
        return {k: _quantities(v) for k, v in tree.items()}
    if isinstance(tree, str):
        return comparable_quantity(tree)
    return tree


def comparable_quantity(text: str) -> Decimal | str:
    """A Quantity's exact value; the text itself when it is not one (then it compares unequal to any value)."""
    try:
        return parse_quantity(text, "quantity")
    except ValidationError:
        return text


def _name(body: Mapping[str, Any], position: int) -> str:
    name = _field(body, "metadata", "name", default=None)
    if not isinstance(name, str) or not name:
        raise ValidationError(f"items[{position}].metadata.name", name, "a listed slice must have a name")
    return name


def _generation(body: Mapping[str, Any]) -> int:
    value = _field(body, "spec", "pool", "generation", default=0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("spec.pool.generation", value, "must be a non-negative integer")
    return value


def _field(body: Mapping[str, Any], *path: str, default: object) -> Any:
    node: object = body
    for key in path:
        if not isinstance(node, Mapping):
            return default
        node = node.get(key, default)
    return node
