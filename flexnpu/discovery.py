"""Discovery backends: each one only scans and returns the node's cards; the plugin framework does the rest.

- NpuSmiScanner runs an ``npu-smi info`` command and parses its table (the production backend);
- DevScanner lists ``<dev_root>/davinci<N>`` (the root is a constructor argument, so tests use a fake /dev);
- InventoryFileScanner reads a JSON/YAML card list (tests and simulated nodes).
A scan that finds no card, or output it cannot read, raises DiscoveryError naming the source: an empty
inventory is never reported as success.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from flexnpu._decode import as_list, as_mapping, get_int, get_str
from flexnpu.cards import Card, Health, card_model
from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.npusmi import parse_npu_smi_info
from flexnpu.units import card_uuid_from_bus_id, device_id

_DAVINCI = re.compile(r"^davinci(\d+)$")


class DiscoveryError(FlexnpuError):
    """The cards of this node could not be found; the message names the source and the problem."""


class Scanner(Protocol):
    """A discovery backend: ``scan`` returns every card of the node, healthy or not."""

    @property
    def source(self) -> str: ...

    def scan(self) -> list[Card]: ...


class NpuSmiScanner:
    def __init__(self, command: str, timeout: float = 15.0) -> None:
        self.command = command
        self.timeout = timeout

    @property
    def source(self) -> str:
        return f"npu-smi command {self.command!r}"

    def scan(self) -> list[Card]:
        try:
            result = subprocess.run(
                shlex.split(self.command), capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise DiscoveryError(f"{self.source} failed: {exc}") from exc
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise DiscoveryError(f"{self.source} exited {result.returncode}: {tail[0]}")
        try:
            return parse_npu_smi_info(result.stdout)
        except ValidationError as exc:
            raise DiscoveryError(f"{self.source}: {exc}") from exc


class DevScanner:
    """Cards from device nodes alone: the model is given, the uuid derives from the index (no bus id here)."""

    def __init__(self, dev_root: Path, model: str) -> None:
        self.dev_root = dev_root
        self.model = card_model(model).name

    @property
    def source(self) -> str:
        return f"device nodes {self.dev_root}/davinci*"

    def scan(self) -> list[Card]:
        try:
            entries = sorted(p.name for p in self.dev_root.iterdir())
        except OSError as exc:
            raise DiscoveryError(f"{self.source}: {exc.strerror}") from exc
        indices = sorted(int(m[1]) for m in map(_DAVINCI.match, entries) if m)
        if not indices:
            raise DiscoveryError(f"{self.source}: no davinci<N> device found")
        return [Card.of_model(self.model, index=i, uuid=f"npu-davinci{i}") for i in indices]


class InventoryFileScanner:
    """``cards: [{index, model, uuid?, bus_id?, chip?, health?, hbm_mib?, aicores?}]`` (or a bare list)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def source(self) -> str:
        return f"inventory file {self.path}"

    def scan(self) -> list[Card]:
        try:
            text = self.path.read_text(encoding="utf-8")
            raw = json.loads(text) if self.path.suffix == ".json" else yaml.safe_load(text)
        except OSError as exc:
            raise DiscoveryError(f"{self.source}: {exc.strerror}") from exc
        except (ValueError, yaml.YAMLError) as exc:
            raise DiscoveryError(f"{self.source}: not valid JSON/YAML ({exc})") from exc
        try:
            return parse_card_list(raw)
        except ValidationError as exc:
            raise DiscoveryError(f"{self.source}: {exc}") from exc


def parse_card_list(raw: object) -> list[Card]:
    """Validate an inventory file's content; errors name the field as ``cards[i].key``."""
    items = as_list(raw.get("cards") if isinstance(raw, Mapping) else raw, "cards")
    if not items:
        raise ValidationError("cards", items, "lists no card")
    cards = [_card(item, f"cards[{i}].") for i, item in enumerate(items)]
    for key, label in ((lambda c: c.uuid, "uuid"), (lambda c: (c.index, c.chip), "index/chip")):
        values = [key(c) for c in cards]
        if len(set(values)) != len(values):
            raise ValidationError(f"cards[].{label}", values, "must be unique")
    return cards


def _card(raw: object, prefix: str) -> Card:
    body: Mapping[str, Any] = as_mapping(raw, prefix.rstrip("."))
    spec = card_model(get_str(body, "model", prefix), prefix + "model")
    index = get_int(body, "index", prefix, lo=0)
    bus_id = get_str(body, "bus_id", prefix, default="", allow_empty=True)
    default_uuid = card_uuid_from_bus_id(bus_id) if bus_id else f"npu-{index}"
    health = get_str(body, "health", prefix, default=Health.HEALTHY.value)
    if health not in {h.value for h in Health}:
        raise ValidationError(prefix + "health", health, "must be Healthy or Unhealthy")
    uuid = get_str(body, "uuid", prefix, default=default_uuid, max_len=57)
    device_id(uuid, 0)
    return Card(
        uuid=uuid,
        index=index,
        model=spec.name,
        aicores=get_int(body, "aicores", prefix, lo=1, default=spec.aicores),
        hbm_mib=get_int(body, "hbm_mib", prefix, lo=1, default=spec.hbm_mib),
        chip=get_int(body, "chip", prefix, lo=0, default=0),
        health=Health(health),
        bus_id=bus_id,
    )


def scanner_for(
    npu_smi: str, inventory: Path | None, dev_root: Path | None, model: str, default_npu_smi: str
) -> Scanner:
    """The backend the settings name (npu-smi when none is named)."""
    if inventory is not None:
        return InventoryFileScanner(inventory)
    if dev_root is not None:
        return DevScanner(dev_root, model)
    return NpuSmiScanner(npu_smi or default_npu_smi)
