"""Rendered manifests are valid Kubernetes objects for every cluster version the chart supports.

kubernetes-validate checks each object against the OpenAPI schema of the core Kubernetes API (strict: unknown
fields are errors). The ServiceMonitor belongs to the Prometheus Operator and the ClusterKopfPeering to kopf, whose
schemas it does not ship: those kinds alone are skipped, by name, and the test asserts the skip happened only for
them.
"""

from __future__ import annotations

import base64

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_support import KUBE_VERSIONS, NAMESPACE, NON_DEFAULT_VALUES, Manifest, Render, find, only, render_for_kube

from flexnpu import names

NOT_IN_KUBERNETES_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("kopf.dev/v1", "ClusterKopfPeering")}
WORKLOADS = ("Deployment", "DaemonSet")


def validate_all(manifests: list[Manifest], version: str) -> set[tuple[str, str]]:
    """Validate every object; return the (apiVersion, kind) pairs that were skipped for want of a schema."""
    skipped = set()
    for manifest in manifests:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in NOT_IN_KUBERNETES_SCHEMAS:
            skipped.add(key)
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
    return skipped


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_default_render_is_valid(chart: helm.Chart, kube_version: str) -> None:
    """Rendered for that version (``helm template --kube-version``), as an install on such a cluster renders."""
    default_manifests = render_for_kube(chart, kube_version)
    assert validate_all(default_manifests, kube_version) == set()
    assert {m["kind"] for m in default_manifests} >= {
        "DaemonSet",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_non_default_render_is_valid(chart: helm.Chart, kube_version: str) -> None:
    assert validate_all(render_for_kube(chart, kube_version, NON_DEFAULT_VALUES), kube_version) == (
        NOT_IN_KUBERNETES_SCHEMAS
    )


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crd_is_valid_and_names_the_claim(chart: helm.Chart, kube_version: str) -> None:
    from_folder = [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    templated = [m for m in render_for_kube(chart, kube_version) if m["kind"] == "CustomResourceDefinition"]
    for crd in from_folder + templated:
        kubernetes_validate.validate(crd, kube_version, strict=True)
    crd = next(c for c in templated if c["metadata"]["name"] == names.CRD_NAME)
    assert crd["spec"]["names"]["kind"] == names.CRD_KIND
    # The device plugin's watch selects the node's claims by spec.nodeName where the server can (1.31+).
    [version] = crd["spec"]["versions"]
    selectable = [f["jsonPath"] for f in version.get("selectableFields", [])]
    assert selectable == ([] if kube_version.startswith("1.28.") else [".spec.nodeName"]), selectable
    assert names.CRD_SHORT_NAME in crd["spec"]["names"]["shortNames"]


def test_invalid_object_is_caught_by_the_validator(default_manifests: list[Manifest]) -> None:
    broken = dict(only(default_manifests, "DaemonSet"))
    broken["spec"] = {**broken["spec"], "replicas": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


def test_namespaced_objects_live_in_the_release_namespace(default_manifests: list[Manifest]) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PriorityClass",
    }
    elsewhere = [
        (m["kind"], m["metadata"]["name"], m["metadata"].get("namespace"))
        for m in default_manifests
        if m["kind"] not in cluster_scoped and m["metadata"].get("namespace") != NAMESPACE
    ]
    # The scheduler reads the API server's authentication ConfigMap, which only a RoleBinding in kube-system grants.
    assert elsewhere == [("RoleBinding", "flexnpu-scheduler-auth-reader", "kube-system")]


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_every_container_has_requests_and_probes(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    for workload in [m for m in manifests if m["kind"] in WORKLOADS]:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container["resources"]["requests"], where
            assert "livenessProbe" in container, where


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_services_select_a_workload(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    pod_labels = [m["spec"]["template"]["metadata"]["labels"] for m in manifests if m["kind"] in WORKLOADS]
    for service in find(manifests, "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def test_pod_disruption_budgets_only_with_several_replicas(
    default_manifests: list[Manifest], custom_manifests: list[Manifest]
) -> None:
    assert find(default_manifests, "PodDisruptionBudget") == []
    budgets = {
        m["metadata"]["labels"]["app.kubernetes.io/component"] for m in find(custom_manifests, "PodDisruptionBudget")
    }
    assert budgets == {"extender", "scheduler"}


def test_generated_token_is_random_and_long(render: Render) -> None:
    tokens = [base64.b64decode(only(render(), "Secret", "daemon-token")["data"]["token"]) for _ in range(2)]
    assert len(tokens[0]) == 48 and tokens[0] != tokens[1]


def test_given_token_is_used(render: Render) -> None:
    secret = only(render({"daemonToken": {"value": "s3cret-token"}}), "Secret", "daemon-token")
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret-token"


def test_existing_token_secret_is_referenced_not_created(custom_manifests: list[Manifest]) -> None:
    assert find(custom_manifests, "Secret", "daemon-token") == []
    operator = only(custom_manifests, "Deployment", "operator")
    node = only(custom_manifests, "DaemonSet", "node")
    for workload in (operator, node):
        secrets = [v["secret"]["secretName"] for v in workload["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        assert secrets == ["my-daemon-token"]
    env = {e["name"]: e.get("value", "") for e in containers_env(operator)}
    assert str(env["FLEXNPU_OPERATOR_DAEMON_TOKEN_FILE"]).endswith("/bearer")


def containers_env(workload: Manifest) -> list[Manifest]:
    return [e for c in workload["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]


def test_service_monitor_is_optional(default_manifests: list[Manifest], custom_manifests: list[Manifest]) -> None:
    assert find(default_manifests, "ServiceMonitor") == []
    monitor = only(custom_manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    service_ports = {p["name"] for s in find(custom_manifests, "Service") for p in s["spec"]["ports"]}
    assert ports <= service_ports
