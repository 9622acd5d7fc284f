"""`helm lint` through Helm's own library: the chart has no lint errors or warnings, with default and other values."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chart_support import CHART_DIR, KUBE_VERSIONS, NAMESPACE, NON_DEFAULT_VALUES

ERROR, WARNING = 3, 2


@pytest.mark.parametrize("values", [None, NON_DEFAULT_VALUES], ids=["default", "non-default"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_is_clean(values: dict[str, Any] | None, kube_version: str) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["errors"] == [] and problems == []
    assert report["total_charts_linted"] == 1


def test_lint_reports_values_outside_the_schema() -> None:
    report = helm.lint(CHART_DIR, {"units": {"unitsPerCard": 0}}, namespace=NAMESPACE)
    assert any(m["severity"] == ERROR and "unitsPerCard" in m["error"] for m in report["messages"])


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "flexnpu"
    assert meta["kubeVersion"].startswith(">=1.28")
