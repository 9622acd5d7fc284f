"""Decode an allocated ResourceClaim (resource.k8s.io/v1, JSON as the API server returns it) into a PreparedClaim.

Contract: ``prepare_claim(raw, node)`` reads

- ``metadata.namespace/name/uid``;
- ``status.allocation.devices.results[]`` whose ``driver`` is ``npu.flexnpu.io`` (others belong to other drivers
  and are skipped): ``request``, ``pool`` (must be this node's pool), ``device`` (``npu-<index>``, a healthy card this
  node has), ``consumedCapacity.units`` (a whole Quantity, 1..units_per_card; absent: the whole card),
  ``consumedCapacity.memory`` (a Quantity in bytes, rounded up to MiB, 1..the card's HBM; absent: the units' share
  of the HBM) and ``shareID``;
- ``status.allocation.devices.config[]`` whose ``opaque.driver`` is ours: ``parameters`` must be exactly
  ``{apiVersion: flexnpu.io/v1alpha1, kind: VNpuConfig[, priority: high|normal|low]}``; an entry applies to the
  requests it lists (all when it lists none; ``req`` also covers its subrequests ``req/sub``); later entries win
  (the API server lists the class's configuration before the claim's);
- ``status.reservedFor[]``: the pod (``resource: pods``) the claim is prepared for: the registration's entity
  ``<namespace>/<pod>`` and its pod UID.

Every hostile value raises ValidationError naming the field (with its path in the claim) and the value. Nothing
here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flexnpu import names
from flexnpu._decode import as_list, as_mapping, get_str
from flexnpu.cards import Card
from flexnpu.errors import ValidationError
from flexnpu.priority import DEFAULT_PRIORITY, Priority, parse_priority

from .quantity import bytes_to_mib, parse_quantity, whole

_DEVICE = re.compile(r"^" + re.escape(names.DRA_DEVICE_PREFIX) + r"(0|[1-9][0-9]{0,2})$")
_REQUEST = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$")
_CONFIG_FIELDS = {"apiVersion", "kind", "priority"}
REGISTRATION_PREFIX = "dra."


@dataclass(frozen=True)
class Node:
    """What the plugin knows about its node: its pool (the node name), its cards, the units a card has."""

    pool: str
    cards: Sequence[Card]
    units_per_card: int

    def card(self, index: int) -> Card | None:
        return next((c for c in self.cards if c.index == index), None)


@dataclass(frozen=True)
class PreparedDevice:
    """One allocation result of ours: a share of one card for one request of the claim."""

    request: str
    pool: str
    device: str
    card_index: int
    card_uuid: str
    units: int
    memory_mib: int
    priority: Priority
    share_id: str
    registration_id: str


@dataclass(frozen=True)
class PreparedClaim:
    namespace: str
    name: str
    uid: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    devices: tuple[PreparedDevice, ...]

    @property
    def entity(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


def registration_id(claim_uid: str, request: str, card_index: int) -> str:
    """The flexnpud registration of one result: ``dra.<claim uid>.<request>.<card index>`` (``/`` -> ``.``).

    The card index keeps the results of one request for several whole cards apart.
    """
    return f"{REGISTRATION_PREFIX}{claim_uid}.{request.replace('/', '.')}.{card_index}"


def prepare_claim(raw: object, node: Node) -> PreparedClaim:
    claim = as_mapping(raw, "claim")
    meta = as_mapping(claim.get("metadata"), "metadata")
    uid = get_str(meta, "uid", "metadata.", max_len=64)
    namespace = get_str(meta, "namespace", "metadata.")
    name = get_str(meta, "name", "metadata.")
    status = as_mapping(claim.get("status", {}), "status")
    if status.get("allocation") is None:
        raise ValidationError("status.allocation", None, "the claim is not allocated")
    allocation = as_mapping(status.get("allocation"), "status.allocation")
    devices = as_mapping(allocation.get("devices", {}), "status.allocation.devices")
    configs = _configs(as_list(devices.get("config", []), "status.allocation.devices.config"))
    pod_namespace, pod_name, pod_uid = _pod(namespace, as_list(status.get("reservedFor", []), "status.reservedFor"))
    results = as_list(devices.get("results", []), "status.allocation.devices.results")
    prepared = tuple(
        _device(result, f"status.allocation.devices.results[{i}].", uid, configs, node)
        for i, result in enumerate(results)
        if as_mapping(result, f"status.allocation.devices.results[{i}]").get("driver") == names.DRA_DRIVER
    )
    if not prepared:
        raise ValidationError("status.allocation.devices.results", len(results), f"no result of {names.DRA_DRIVER}")
    return PreparedClaim(namespace, name, uid, pod_namespace, pod_name, pod_uid, prepared)


def _pod(namespace: str, reserved: list[Any]) -> tuple[str, str, str]:
    for i, raw in enumerate(reserved):
        ref = as_mapping(raw, f"status.reservedFor[{i}]")
        if ref.get("resource") == "pods" and ref.get("apiGroup", "") in ("", None):
            prefix = f"status.reservedFor[{i}]."
            return namespace, get_str(ref, "name", prefix), get_str(ref, "uid", prefix, max_len=64)
    raise ValidationError("status.reservedFor", len(reserved), "no pod is reserved for the claim")


def _configs(raw: list[Any]) -> list[tuple[tuple[str, ...], Priority]]:
    out: list[tuple[tuple[str, ...], Priority]] = []
    for i, entry in enumerate(raw):
        prefix = f"status.allocation.devices.config[{i}]"
        config = as_mapping(entry, prefix)
        opaque = config.get("opaque")
        if opaque is None or as_mapping(opaque, prefix + ".opaque").get("driver") != names.DRA_DRIVER:
            continue
        requests = tuple(
            get_str({"r": r}, "r", f"{prefix}.requests[{j}]")
            for j, r in enumerate(as_list(config.get("requests", []), prefix + ".requests"))
        )
        out.append(
            (requests, parse_vnpu_config(as_mapping(opaque, prefix).get("parameters"), prefix + ".opaque.parameters"))
        )
    return out


def parse_vnpu_config(raw: object, field: str = "parameters") -> Priority:
    """The priority of a ``VNpuConfig``; unknown fields, another apiVersion or kind are refused."""
    params = as_mapping(raw, field)
    unknown = sorted(set(params) - _CONFIG_FIELDS)
    if unknown:
        raise ValidationError(f"{field}.{unknown[0]}", params[unknown[0]], "unknown field of VNpuConfig")
    if params.get("apiVersion") != names.DRA_CONFIG_API_VERSION:
        raise ValidationError(
            f"{field}.apiVersion", params.get("apiVersion"), f"must be {names.DRA_CONFIG_API_VERSION}"
        )
    if params.get("kind") != names.DRA_CONFIG_KIND:
        raise ValidationError(f"{field}.kind", params.get("kind"), f"must be {names.DRA_CONFIG_KIND}")
    if "priority" not in params:
        return DEFAULT_PRIORITY
    return parse_priority(params["priority"], f"{field}.priority")


def _priority(request: str, configs: list[tuple[tuple[str, ...], Priority]]) -> Priority:
    priority = DEFAULT_PRIORITY
    parent = request.split("/", 1)[0]
    for requests, p in configs:
        if not requests or request in requests or parent in requests:
            priority = p
    return priority


def _device(
    raw: object, prefix: str, uid: str, configs: list[tuple[tuple[str, ...], Priority]], node: Node
) -> PreparedDevice:
    result: Mapping[str, Any] = as_mapping(raw, prefix.rstrip("."))
    request = get_str(result, "request", prefix)
    if not _REQUEST.match(request):
        raise ValidationError(prefix + "request", request, "is not a request name (DNS label[/DNS label])")
    pool = get_str(result, "pool", prefix)
    if pool != node.pool:
        raise ValidationError(prefix + "pool", pool, f"is not this node's pool {node.pool!r}")
    device = get_str(result, "device", prefix)
    match = _DEVICE.match(device)
    card = node.card(int(match[1])) if match else None
    if card is None:
        raise ValidationError(prefix + "device", device, f"this node has no such card (it has {_have(node)})")
    if not card.healthy:
        raise ValidationError(prefix + "device", device, f"the card is {card.health.value}")
    consumed = as_mapping(result.get("consumedCapacity", {}), prefix + "consumedCapacity")
    units = _units(consumed, prefix + "consumedCapacity.", node.units_per_card)
    memory = _memory(consumed, prefix + "consumedCapacity.", card, units, node.units_per_card)
    share_id = get_str(result, "shareID", prefix, default="", allow_empty=True, max_len=64)
    return PreparedDevice(
        request=request,
        pool=pool,
        device=device,
        card_index=card.index,
        card_uuid=card.uuid,
        units=units,
        memory_mib=memory,
        priority=_priority(request, configs),
        share_id=share_id,
        registration_id=registration_id(uid, request, card.index),
    )


def _units(consumed: Mapping[str, Any], prefix: str, units_per_card: int) -> int:
    key = names.DRA_CAPACITY_UNITS
    if key not in consumed:
        return units_per_card
    raw = consumed[key]
    units = whole(parse_quantity(raw, prefix + key), prefix + key, raw)
    if not 1 <= units <= units_per_card:
        raise ValidationError(prefix + key, raw, f"must be in 1..{units_per_card} units of a card")
    return units


def _memory(consumed: Mapping[str, Any], prefix: str, card: Card, units: int, units_per_card: int) -> int:
    key = names.DRA_CAPACITY_MEMORY
    if key not in consumed:
        return card.hbm_mib * units // units_per_card
    raw = consumed[key]
    mib = bytes_to_mib(parse_quantity(raw, prefix + key))
    if not 1 <= mib <= card.hbm_mib:
        raise ValidationError(prefix + key, raw, f"must be 1Mi..{card.hbm_mib}Mi (the HBM of npu-{card.index})")
    return mib


def _have(node: Node) -> str:
    return ", ".join(f"{names.DRA_DEVICE_PREFIX}{c.index}" for c in node.cards) or "no cards"
