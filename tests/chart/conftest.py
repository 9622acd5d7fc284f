"""Fixtures of the chart tests: Helm's own Go library (helm-python-sdk) loads, lints and renders the chart offline.

No helm binary and no cluster: ``helm_python`` binds libhelm_c, the C ABI over Helm's Go SDK, so what renders here
is what ``helm template`` / ``helm install`` renders. Rendered manifests come back as parsed YAML documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml
from chart_support import CHART_DIR, NAMESPACE, NON_DEFAULT_VALUES, RELEASE, Manifest, Render, parse_manifests


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Render:
    def render_values(values: dict[str, Any] | None = None, **options: Any) -> list[Manifest]:
        options.setdefault("name", RELEASE)
        options.setdefault("namespace", NAMESPACE)
        return parse_manifests(chart.render(values, **options))

    return render_values


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def custom_manifests(render: Render) -> list[Manifest]:
    return render(NON_DEFAULT_VALUES)


@pytest.fixture(scope="session")
def chart_crds(chart: helm.Chart, default_manifests: list[Manifest]) -> list[Manifest]:
    """Every CRD a default install creates: those of the crds/ folder (never templated) and the templated ones
    (the VNpuClaim CRD, a template so that mode dra can leave it out)."""
    from_folder = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    return from_folder + [m for m in default_manifests if m["kind"] == "CustomResourceDefinition"]


@pytest.fixture(scope="session")
def chart_values(chart: helm.Chart) -> dict[str, Any]:
    return chart.values
