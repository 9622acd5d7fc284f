"""`mode: dra`: a DeviceClass, the node DaemonSet with the DRA kubelet plugin beside flexnpud, DRA RBAC, and
nothing of the device-plugin mode (no device plugin, extender, second scheduler or operator).

DRA (resource.k8s.io/v1) needs Kubernetes 1.34 or later, so the dra render is validated against the newest
schema kubernetes-validate ships only, not the chart's 1.28 floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_support import (
    CHART_DIR,
    NAMESPACE,
    NON_DEFAULT_VALUES,
    Manifest,
    Render,
    containers,
    find,
    only,
    render_for_kube,
    without_random_parts,
)

from flexnpu import names
from flexnpu.shim.daemon.config import load_config

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
    assert without_random_parts(render({"mode": "deviceplugin"})) == without_random_parts(default_manifests)


def test_dra_lint_is_clean() -> None:
    version = f"v{kubernetes_validate.latest_version()}"
    report = helm.lint(CHART_DIR, DRA, strict=True, namespace=NAMESPACE, kube_version=version)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


def test_dra_on_a_cluster_older_than_1_34_fails_with_the_reason(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"mode dra needs Kubernetes 1\.34 or later.*v1\.33\.7"):
        render_for_kube(chart, "v1.33.7", DRA)
    assert find(render_for_kube(chart, "v1.34.0", DRA), "DeviceClass")
    assert find(render_for_kube(chart, "v1.28.0"), "DaemonSet")  # mode deviceplugin keeps the 1.28 floor


def test_no_vnpuclaim_crd_in_dra_mode(chart: helm.Chart, dra_manifests: list[Manifest]) -> None:
    assert find(dra_manifests, "CustomResourceDefinition") == []
    # crds/ is installed on every install whatever the mode: the claim CRD must not be there.
    from_folder = {doc["metadata"]["name"] for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc}
    assert names.CRD_NAME not in from_folder


def test_the_claim_crd_survives_uninstall_and_a_switch_to_dra(default_manifests: list[Manifest]) -> None:
    [crd] = find(default_manifests, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == names.CRD_NAME
    # Deleting the CRD would delete every VNpuClaim: Helm must leave it when the release stops rendering it.
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    source = yaml.safe_load((CHART_DIR / "files" / f"{names.CRD_NAME}.yaml").read_text(encoding="utf-8"))
    assert crd["spec"] == source["spec"]


@pytest.mark.parametrize("host_network", [True, False])
def test_flexnpud_listens_on_loopback_in_dra_mode(render: Render, host_network: bool, tmp_path: Path) -> None:
    # Only the DRA plugin in the same pod calls flexnpud in mode dra, so nothing else may reach its API, even
    # where node.daemon.host says 0.0.0.0 (the default, for the operator of mode deviceplugin).
    manifests = render({**DRA, "node": {"hostNetwork": host_network, "daemon": {"host": "0.0.0.0"}}})
    conf = tmp_path / "flexnpud.conf"
    conf.write_text(only(manifests, "ConfigMap", "node")["data"]["flexnpud.conf"], encoding="utf-8")
    settings, _ = load_config(conf)
    assert settings.host == "127.0.0.1"
    pod = containers(only(manifests, "DaemonSet", "node"))
    assert f"--daemon-url=http://127.0.0.1:{settings.port}" in pod["dra-plugin"]["args"]
    for probe in (pod["flexnpud"]["livenessProbe"], pod["flexnpud"]["readinessProbe"]):
        if host_network:  # kubelet probes from the host's network namespace, which is the pod's
            assert probe["httpGet"]["host"] == "127.0.0.1"
        else:  # kubelet cannot reach the pod's loopback: the check runs inside the container
            assert f"http://127.0.0.1:{settings.port}/service/health" in probe["exec"]["command"][-1]


def test_deviceplugin_mode_keeps_the_daemon_reachable_for_the_operator(
    default_manifests: list[Manifest], tmp_path: Path
) -> None:
    conf = tmp_path / "flexnpud.conf"
    conf.write_text(only(default_manifests, "ConfigMap", "node")["data"]["flexnpud.conf"], encoding="utf-8")
    settings = load_config(conf)[0]
    assert settings.host == "0.0.0.0"
    node = only(default_manifests, "DaemonSet", "node")
    pod = containers(node)
    assert pod["flexnpud"]["livenessProbe"]["httpGet"] == {"path": "/service/health", "port": "daemon"}
    # The device plugin beside it registers a claim whose slot is missing at Allocate: same pod, loopback, the
    # daemon's port, the daemon's token (read-only from the token Secret, as flexnpud reads it).
    args = pod["device-plugin"]["args"]
    assert f"--daemon-url=http://127.0.0.1:{settings.port}" in args
    [token_file] = [a.split("=", 1)[1] for a in args if a.startswith("--daemon-token-file=")]
    [mount] = [m for m in pod["device-plugin"]["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    [volume] = [v for v in node["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    secret = only(default_manifests, "Secret", "daemon-token")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"] and "items" not in volume["secret"]
    assert token_file.rsplit("/", 1)[1] in {**secret.get("data", {}), **secret.get("stringData", {})}


def test_no_daemon_scrape_in_dra_mode(render: Render) -> None:
    monitor = {"serviceMonitor": {"enabled": True}}
    ports = [
        {e["port"] for e in only(render(v), "ServiceMonitor")["spec"]["endpoints"]}
        for v in (monitor, {**monitor, **DRA})
    ]
    assert "daemon" in ports[0] and "daemon" not in ports[1]
