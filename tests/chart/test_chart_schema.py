"""values.schema.json guards the values: nonsense fails the render with the offending key named, sane values pass.

The enums are checked against the code that consumes them, so the chart cannot offer a policy a component lacks.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
from chart_support import CHART_DIR, Render

from flexnpu.extender.core import policies as placement
from flexnpu.shim.daemon import config as daemon_config
from flexnpu.units import MAX_UNITS_PER_CARD


def nested(path: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': value}} from 'a.b'."""
    head, _, rest = path.partition(".")
    return {head: nested(rest, value) if rest else value}


REJECTED = [
    ("units.unitsPerCard", 0),
    ("units.unitsPerCard", MAX_UNITS_PER_CARD + 1),
    ("units.unitsPerCard", "10"),
    ("units.unitsPerCard", 2.5),
    ("units.oversubscription", 0.5),
    ("units.oversubscription", 17),
    ("node.daemon.quota", 0),
    ("node.daemon.quota", 17),
    ("extender.policy", "nonsense"),
    ("node.daemon.policy", "fifo"),
    ("scheduler.mode", "third"),
    ("node.daemon.devices", "gpu"),
    ("node.daemon.port", 0),
    ("node.devicePlugin.discovery", "guess"),
    ("extender.logLevel", "loud"),
    ("node.hostPaths.socketDir", "relative/dir"),
    ("scheduler.image.tag", "latest"),
    ("node.devicePlugin.inventory", [{"index": 0, "model": "H100"}]),
    ("unitsPerCard", 10),
    ("extender.replcias", 2),
    ("mode", "dynamic"),
    ("node.hostPaths.cdiDir", "var/run/cdi"),
    ("node.draPlugin.logLevel", "loud"),
]


@pytest.mark.parametrize(("path", "value"), REJECTED, ids=[f"{p}={v!r}" for p, v in REJECTED])
def test_values_outside_the_schema_are_rejected(render: Render, path: str, value: Any) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(nested(path, value))
    key = path.rsplit(".", 1)[-1]
    assert key in str(caught.value)


ACCEPTED = [
    ("units.unitsPerCard", 1),
    ("units.unitsPerCard", MAX_UNITS_PER_CARD),
    ("units.oversubscription", 16),
    ("units.oversubscription", 1.5),
    ("node.daemon.quota", 1),
    ("node.daemon.quota", 16),
    ("node.daemon.devices", "sim:910B4x16"),
    ("scheduler.mode", "default"),
    ("node.maxUnavailable", "10%"),
]


@pytest.mark.parametrize(("path", "value"), ACCEPTED, ids=[f"{p}={v!r}" for p, v in ACCEPTED])
def test_values_at_the_bounds_render(render: Render, path: str, value: Any) -> None:
    assert render(nested(path, value))


def schema_enum(chart: helm.Chart, *path: str) -> set[str]:
    node: dict[str, Any] = chart.schema or {}
    for key in path:
        node = node["properties"][key]
    return set(node["enum"])


def test_policy_enum_matches_the_extender(chart: helm.Chart) -> None:
    assert schema_enum(chart, "extender", "policy") == set(placement.POLICIES) | set(placement.ALIASES)
    assert chart.values["extender"]["policy"] == placement.DEFAULT_POLICY


def test_daemon_policy_enum_matches_the_daemon(chart: helm.Chart) -> None:
    assert schema_enum(chart, "node", "daemon", "policy") == set(daemon_config.POLICIES)


def test_defaults_satisfy_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(chart.values)


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):(?: |$)")


def schema_keys(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of the chart's own keys: properties the schema declares (free-form maps like nodeSelector excluded)."""
    keys: set[tuple[str, ...]] = set()
    for key, sub in schema.get("properties", {}).items():
        keys.add((*prefix, key))
        keys |= schema_keys(sub, (*prefix, key))
    return keys


def documented_keys(lines: list[str]) -> dict[tuple[str, ...], bool]:
    """Every mapping key of values.yaml by path, and whether a comment line sits right above it."""
    found: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        found[tuple(k for _, k in stack)] = lines[number - 1].lstrip().startswith("#")
    return found


def test_every_value_is_documented(chart: helm.Chart) -> None:
    """Each key the schema declares has a default in values.yaml with a comment line right above it."""
    lines = (CHART_DIR / "values.yaml").read_text(encoding="utf-8").splitlines()
    in_file = documented_keys(lines)
    declared = schema_keys(chart.schema or {}) - {("global",)}
    # requests/limits are Kubernetes' own fields, documented by the resources key above them.
    declared = {k for k in declared if k[-1] not in ("requests", "limits")}
    assert sorted(declared - in_file.keys()) == []
    assert sorted(k for k in declared if not in_file[k]) == []
