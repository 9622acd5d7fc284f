"""`mode: dra`: a DeviceClass, the node DaemonSet with the DRA kubelet plugin beside flexnpud, DRA RBAC, and
nothing of the device-plugin mode (no device plugin, extender, second scheduler or operator).

DRA (resource.k8s.io/v1) needs Kubernetes 1.34 or later, so the dra render is validated against the newest
schema kubernetes-validate ships only, not the chart's 1.28 floor.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from chart_support import CHART_DIR, NAMESPACE, NON_DEFAULT_VALUES, Manifest, Render, containers, find, only

from flexnpu import names

DRA = {"mode": "dra"}
PLUGIN_DIR = f"/var/lib/kubelet/plugins/{names.DRA_DRIVER}"


@pytest.fixture(scope="module")
def dra_manifests(render: Render) -> list[Manifest]:
    return render(DRA)


def volumes_by_path(daemonset: Manifest) -> dict[str, str]:
    """hostPath -> volume name."""
    volumes = daemonset["spec"]["template"]["spec"]["volumes"]
    return {v["hostPath"]["path"]: v["name"] for v in volumes if "hostPath" in v}


def node_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return list(only(manifests, "ClusterRole", "node")["rules"])


def verbs_on(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}


@pytest.mark.parametrize("values", [DRA, {**NON_DEFAULT_VALUES, **DRA}], ids=["dra", "dra-non-default"])
def test_dra_render_is_valid(render: Render, values: dict[str, Any]) -> None:
    skipped = {("monitoring.coreos.com/v1", "ServiceMonitor")}
    for manifest in render(values):
        if (manifest["apiVersion"], manifest["kind"]) not in skipped:
            kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_device_class_selects_the_driver(dra_manifests: list[Manifest]) -> None:
    device_class = only(dra_manifests, "DeviceClass")
    assert device_class["apiVersion"] == "resource.k8s.io/v1"
    assert device_class["metadata"]["name"] == names.DRA_DEVICE_CLASS
    assert device_class["spec"]["selectors"] == [{"cel": {"expression": f'device.driver == "{names.DRA_DRIVER}"'}}]


def test_no_extender_scheduler_operator_or_device_plugin(dra_manifests: list[Manifest]) -> None:
    components = {m["metadata"].get("labels", {}).get("app.kubernetes.io/component") for m in dra_manifests}
    assert components.isdisjoint({"extender", "scheduler", "operator"})
    assert find(dra_manifests, "Deployment") == []
    daemonset = only(dra_manifests, "DaemonSet", "node")
    assert set(containers(daemonset)) == {"dra-plugin", "flexnpud"}
    assert names.KUBELET_DEVICE_PLUGIN_DIR not in volumes_by_path(daemonset)


def test_node_daemonset_runs_the_kubelet_plugin_with_its_host_paths(dra_manifests: list[Manifest]) -> None:
    daemonset = only(dra_manifests, "DaemonSet", "node")
    plugin = containers(daemonset)["dra-plugin"]
    assert plugin["args"][0] == "dra-plugin"
    assert f"--registration-socket={names.DRA_REGISTRATION_SOCKET}" in plugin["args"]
    assert f"--plugin-socket={names.DRA_PLUGIN_SOCKET}" in plugin["args"]
    assert f"--checkpoint={names.DRA_CHECKPOINT}" in plugin["args"]
    assert "--daemon-url=http://127.0.0.1:8765" in plugin["args"]
    host = volumes_by_path(daemonset)
    mounted = {m["name"]: m["mountPath"] for m in plugin["volumeMounts"]}
    for path in ("/var/lib/kubelet/plugins_registry", PLUGIN_DIR, names.DRA_CDI_DIR, names.SHIM_SOCKET_DIR):
        assert mounted[host[path]] == path


def test_node_rbac_in_dra_mode(dra_manifests: list[Manifest]) -> None:
    rules = node_rules(dra_manifests)
    assert verbs_on(rules, "resource.k8s.io", "resourceslices") >= {"create", "update", "delete", "list", "watch"}
    assert verbs_on(rules, "resource.k8s.io", "resourceclaims") == {"get"}
    assert "create" in verbs_on(rules, "", "events")
    # The device-plugin handshake's rights are not granted: no pod patching, no node annotation, no VNpuClaims.
    assert verbs_on(rules, "", "pods") == set()
    assert verbs_on(rules, "", "nodes") == {"get"}
    assert verbs_on(rules, names.CRD_GROUP, names.CRD_PLURAL) == set()


def test_deviceplugin_mode_is_the_default_and_has_no_dra_objects(
    default_manifests: list[Manifest], chart_values: dict[str, Any]
) -> None:
    assert chart_values["mode"] == "deviceplugin"
    assert find(default_manifests, "DeviceClass") == []
    assert "dra-plugin" not in containers(only(default_manifests, "DaemonSet", "node"))
    assert verbs_on(node_rules(default_manifests), "resource.k8s.io", "resourceslices") == set()


def test_explicit_deviceplugin_mode_renders_like_the_default(render: Render, default_manifests: list[Manifest]) -> None:
    def without_token(manifests: list[Manifest]) -> list[Manifest]:
        return [m for m in manifests if m["kind"] != "Secret"]  # the daemon token is random on every render

    assert without_token(render({"mode": "deviceplugin"})) == without_token(default_manifests)


def test_dra_lint_is_clean() -> None:
    version = f"v{kubernetes_validate.latest_version()}"
    report = helm.lint(CHART_DIR, DRA, strict=True, namespace=NAMESPACE, kube_version=version)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
