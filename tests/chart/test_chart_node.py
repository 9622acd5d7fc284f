"""The node DaemonSet: device plugin and flexnpud see the host paths the handshake relies on, and the rendered
flexnpud.conf is accepted by the daemon's own configuration loader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chart_support import REPO, Manifest, Render, containers, only

from flexnpu import names
from flexnpu.shim.daemon.config import load_config


def host_paths(daemonset: Manifest) -> dict[str, str]:
    """Volume name -> host path of a DaemonSet's hostPath volumes."""
    return {
        str(v["name"]): str(v["hostPath"]["path"])
        for v in daemonset["spec"]["template"]["spec"]["volumes"]
        if "hostPath" in v
    }


def mounts(container: Manifest) -> dict[str, Manifest]:
    """Mount path -> volume mount of a container."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def host_mount(daemonset: Manifest, container: Manifest, host_path: str) -> Manifest:
    """The mount of ``host_path`` in ``container`` (found by the volume, whatever the mount path)."""
    volume = {path: name for name, path in host_paths(daemonset).items()}[host_path]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume]
    return dict(mount)


@pytest.fixture(scope="module")
def daemonset(default_manifests: list[Manifest]) -> Manifest:
    return only(default_manifests, "DaemonSet", "node")


def test_device_plugin_mounts_the_kubelet_dir(daemonset: Manifest) -> None:
    plugin = containers(daemonset)["device-plugin"]
    mount = host_mount(daemonset, plugin, names.KUBELET_DEVICE_PLUGIN_DIR)
    assert mount["mountPath"] == names.KUBELET_DEVICE_PLUGIN_DIR and not mount.get("readOnly")
    assert f"--kubelet-dir={names.KUBELET_DEVICE_PLUGIN_DIR}" in plugin["args"]
    assert plugin["livenessProbe"]["exec"]["command"][-1].endswith("/" + names.PLUGIN_SOCKET_NAME)


def test_daemon_mounts_the_socket_dir_at_the_host_path(daemonset: Manifest) -> None:
    # Allocate mounts the host directory into pods, so the daemon must create its socket at the same host path.
    daemon = containers(daemonset)["flexnpud"]
    mount = host_mount(daemonset, daemon, names.SHIM_SOCKET_DIR)
    assert mount["mountPath"] == names.SHIM_SOCKET_DIR and not mount.get("readOnly")


def test_init_container_fills_the_runtime_dir(daemonset: Manifest) -> None:
    [installer] = daemonset["spec"]["template"]["spec"]["initContainers"]
    mount = host_mount(daemonset, installer, names.SHIM_RUNTIME_HOST_DIR)
    assert installer["command"][2] == mount["mountPath"]
    assert installer["command"][1] == "/opt/flexnpu/install_runtime.py"


def test_init_container_installs_the_interposer_where_allocate_finds_it(daemonset: Manifest) -> None:
    [installer] = daemonset["spec"]["template"]["spec"]["initContainers"]
    plugin = containers(daemonset)["device-plugin"]
    env = {e["name"]: e.get("value") for e in plugin.get("env", [])}
    host_library = env["FLEXNPU_DEVICEPLUGIN_INTERPOSER_HOST_PATH"]
    host_dir = host_library.rsplit("/", 1)[0]
    into = host_mount(daemonset, installer, host_dir)["mountPath"]
    assert installer["command"][3:] == ["--interposer", f"{into}/libflexnpu.so"]
    assert host_mount(daemonset, plugin, host_dir)["readOnly"] is True
    preload_dir = env["FLEXNPU_DEVICEPLUGIN_PRELOAD_HOST_FILE"].rsplit("/", 1)[0]
    assert not host_mount(daemonset, plugin, preload_dir).get("readOnly")


def test_driver_and_devices_for_npu_smi(daemonset: Manifest) -> None:
    for container in containers(daemonset).values():
        assert host_mount(daemonset, container, "/dev")["mountPath"] == "/dev"
        for path in ("/usr/local/Ascend/driver", "/usr/local/bin/npu-smi", "/usr/local/dcmi"):
            assert host_mount(daemonset, container, path)["readOnly"] is True
        assert container["securityContext"]["privileged"] is True


def test_without_host_driver_nothing_of_it_is_mounted(custom_manifests: list[Manifest]) -> None:
    daemonset = only(custom_manifests, "DaemonSet", "node")
    assert "/usr/local/Ascend/driver" not in host_paths(daemonset).values()
    for container in containers(daemonset).values():
        assert "LD_LIBRARY_PATH" not in {e["name"] for e in container.get("env", [])}


def selects(spec: Manifest, labels: dict[str, str]) -> bool:
    """Whether kube-scheduler's node affinity rules let the pod spec onto a node with ``labels`` (nodeSelector ANDed
    with the required node terms, terms ORed, a term's In expressions ANDed)."""
    if any(labels.get(k) != v for k, v in spec.get("nodeSelector", {}).items()):
        return False
    required = spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    return any(
        all(e["operator"] == "In" and labels.get(e["key"]) in e["values"] for e in term["matchExpressions"])
        for term in required["nodeSelectorTerms"]
    )


@pytest.mark.parametrize(
    ("labels", "selected"),
    [
        ({"accelerator": "huawei-Ascend910"}, True),  # the hand-applied label of the Ascend ecosystem
        ({"feature.node.kubernetes.io/pci-1200_19e5.present": "true"}, True),  # Node Feature Discovery's, no hand
        ({"feature.node.kubernetes.io/pci-0300_10de.present": "true"}, False),  # a GPU node
        ({}, False),
    ],
)
def test_the_node_daemonset_runs_on_nodes_with_either_the_ascend_or_the_nfd_label(
    daemonset: Manifest, labels: dict[str, str], selected: bool
) -> None:
    spec = daemonset["spec"]["template"]["spec"]
    assert selects(spec, {"kubernetes.io/os": "linux", **labels}) is selected


def test_no_label_sets_select_on_the_node_selector_alone_and_a_required_node_affinity_replaces_them(
    render: Render,
) -> None:
    alone = only(render({"ascend": {"nodeLabelsAnyOf": [], "nodeSelector": {"pool": "npu"}}}), "DaemonSet", "node")
    required = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}]}
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    replaced = only(render({"node": {"affinity": own}}), "DaemonSet", "node")
    alone_spec, replaced_spec = alone["spec"]["template"]["spec"], replaced["spec"]["template"]["spec"]
    assert "affinity" not in alone_spec and selects(alone_spec, {"kubernetes.io/os": "linux", "pool": "npu"})
    assert replaced_spec["affinity"] == own
    assert not selects(replaced_spec, {"kubernetes.io/os": "linux", "accelerator": "huawei-Ascend910"})


def test_ascend_node_selector_and_tolerations(daemonset: Manifest, custom_manifests: list[Manifest]) -> None:
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {t["key"] for t in spec["tolerations"]} >= {names.RESOURCE_VNPU}
    custom = only(custom_manifests, "DaemonSet", "node")["spec"]["template"]["spec"]
    assert custom["nodeSelector"] == {"kubernetes.io/os": "linux", "node.example.com/npu": "910b"}
    assert "tolerations" not in custom


def test_units_reach_the_device_plugin(custom_manifests: list[Manifest]) -> None:
    plugin = containers(only(custom_manifests, "DaemonSet", "node"))["device-plugin"]
    assert "--units-per-card=100" in plugin["args"]
    assert "--inventory=/etc/flexnpu/inventory.yaml" in plugin["args"]
    assert not any(a.startswith("--npu-smi") for a in plugin["args"])


def rendered_daemon_config(manifests: list[Manifest], tmp_path: Path) -> Any:
    conf = tmp_path / "flexnpud.conf"
    conf.write_text(only(manifests, "ConfigMap", "node")["data"]["flexnpud.conf"], encoding="utf-8")
    settings, warnings = load_config(conf)
    assert warnings == []
    return settings


def test_daemon_config_is_accepted_by_the_daemon(
    daemonset: Manifest, default_manifests: list[Manifest], tmp_path: Path
) -> None:
    settings = rendered_daemon_config(default_manifests, tmp_path)
    assert settings.socket_dir == names.SHIM_SOCKET_DIR
    assert (settings.host, settings.quota, settings.oversubscription) == ("0.0.0.0", 10, 1.0)
    daemon = containers(daemonset)["flexnpud"]
    assert daemon["ports"][0]["containerPort"] == settings.port
    assert daemon["args"] == ["daemon", "--config", "/etc/flexnpu/flexnpud.conf"]
    # The token file and the registrations live on mounts: the Secret, and host state surviving restarts.
    assert Path(settings.token_file).parent.as_posix() in mounts(daemon)
    state = mounts(daemon)[settings.persistent_file_dir]
    assert state["name"] in host_paths(daemonset)


def test_custom_daemon_config(custom_manifests: list[Manifest], tmp_path: Path) -> None:
    settings = rendered_daemon_config(custom_manifests, tmp_path)
    assert (settings.quota, settings.oversubscription, settings.policy) == (16, 2.5, "ops")
    assert (settings.devices, settings.share_in_idle, settings.host) == ("sim:910B3x2", True, "127.0.0.1")
    assert settings.token_file.endswith("/bearer")


def test_config_change_rolls_the_daemonset(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = only(render(values), "DaemonSet", "node")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum({}) != checksum({"node": {"daemon": {"quota": 8}}})


def test_no_pod_resources_mount_since_no_component_reads_it(daemonset: Manifest) -> None:
    # kubelet's pod-resources API was mounted for a restart path that never used it; the device plugin resumes
    # from its pod annotations instead. Nothing of the product may dial it without the mount coming back.
    assert not any("pod-resources" in path for path in host_paths(daemonset).values())
    product = [p for p in (REPO).glob("*/**/*.py") if p.parts[len(REPO.parts)] not in ("tests", "build", "protos")]
    readers = [str(p) for p in product if re.search(r"pod-resources|podresources", p.read_text(encoding="utf-8"))]
    assert readers == []
