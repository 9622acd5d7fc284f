"""Helpers of the chart tests: the chart's location, the values that flip every switch, and manifest lookups."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml
from helm_python import _native

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "flexnpu"
EXAMPLES_DIR = REPO / "deploy" / "examples"
RELEASE = "flexnpu"
NAMESPACE = "flexnpu-system"

# The chart's kubeVersion floor and the newest schema kubernetes-validate ships: every manifest must pass both.
KUBE_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())

# Values that flip every switch away from its default, so that the other branch of each template renders too.
NON_DEFAULT_VALUES: dict[str, Any] = {
    "fullnameOverride": "npu",
    "image": {"repository": "registry.example.com/flexnpu", "tag": "dev", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "commonLabels": {"team": "ml-platform"},
    "units": {"unitsPerCard": 100, "oversubscription": 2.5},
    "ascend": {
        "hostDriver": False,
        "nodeSelector": {"accelerator": None, "node.example.com/npu": "910b"},
        "tolerations": [],
    },
    "node": {
        "hostNetwork": False,
        "hostPID": False,
        "maxUnavailable": "20%",
        "devicePlugin": {
            "discovery": "inventory",
            "inventory": [{"index": 0, "model": "910B3"}, {"index": 1, "model": "910B3"}],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
        },
        "daemon": {"devices": "sim:910B3x2", "policy": "ops", "shareInIdle": True, "quota": 16, "host": "127.0.0.1"},
    },
    "daemonToken": {"existingSecret": "my-daemon-token", "key": "bearer"},
    "extender": {"replicas": 3, "policy": "binpack", "port": 9000},
    "webhook": {"port": 10443, "failurePolicy": "Ignore", "timeoutSeconds": 5, "excludeNamespaces": ["batch"]},
    "highPriority": {"minValue": 5000, "namespaces": ["prod", "infer"], "priorityClasses": ["gold"]},
    "scheduler": {
        "mode": "second",
        "replicas": 2,
        "schedulerName": "npu-scheduler",
        "image": {"tag": "v1.30.6"},
        "extender": {"nodeCacheCapable": False, "ignorable": True},
    },
    "operator": {"resyncSeconds": 10, "replicas": 2},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
}

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def parse_manifests(rendered: dict[str, str]) -> list[Manifest]:
    """Every Kubernetes object of a render (NOTES.txt and templates that render to nothing dropped)."""
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def find(manifests: list[Manifest], kind: str, component: str | None = None) -> list[Manifest]:
    """Objects of ``kind`` (and of the chart ``component`` label, when given)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind
        and (component is None or m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)
    ]


def only(manifests: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    found = find(manifests, kind, component)
    assert len(found) == 1, f"expected one {kind} of component {component}, found {len(found)}"
    return found[0]


def containers(workload: Manifest) -> dict[str, Manifest]:
    """A workload's containers by name."""
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def load_yaml_docs(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def render_for_kube(chart: helm.Chart, kube_version: str, values: dict[str, Any] | None = None) -> list[Manifest]:
    """The chart rendered for a cluster of ``kube_version`` (``helm template --kube-version``).

    helm_python's Chart.render does not expose the option its native helm_render accepts (``kube_version`` in the
    options JSON), so this calls that directly; Chart.render otherwise renders for Helm's default, v1.36.0.
    """
    options = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": kube_version}
    raw = _native.call_string("helm_render", chart._raw(), json.dumps(values) if values else None, json.dumps(options))
    rendered: dict[str, str] = json.loads(raw)
    return parse_manifests(rendered)


RANDOM_ON_EVERY_RENDER = ("Secret",)


def without_random_parts(manifests: list[Manifest]) -> list[Manifest]:
    """The render without what offline rendering generates anew each time: the daemon token and webhook Secrets
    and the generated CA in the webhook configurations' caBundle."""
    out = []
    for manifest in manifests:
        if manifest["kind"] in RANDOM_ON_EVERY_RENDER:
            continue
        if manifest["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            hooks = [{**h, "clientConfig": {**h["clientConfig"], "caBundle": ""}} for h in manifest["webhooks"]]
            manifest = {**manifest, "webhooks": hooks}
        out.append(manifest)
    return out
