"""The scheduler configuration the chart renders is the one DESIGN.md sections 3, 9 and 10 describe."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
import yaml
from chart_support import NAMESPACE, Manifest, Render, containers, find, only, render_for_kube

from flexnpu import names

CONFIG_KEY = "scheduler-config.yaml"


def scheduler_config(manifests: list[Manifest]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(only(manifests, "ConfigMap", "scheduler")["data"][CONFIG_KEY])
    return config


def extender_entry(manifests: list[Manifest]) -> dict[str, Any]:
    config = scheduler_config(manifests)
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    [entry] = config["extenders"]
    return dict(entry)


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_extender_verbs_and_resources(manifests_name: str, request: pytest.FixtureRequest) -> None:
    entry = extender_entry(request.getfixturevalue(manifests_name))
    verbs = {k: entry[k] for k in ("filterVerb", "bindVerb", "preemptVerb")}
    assert verbs == {"filterVerb": "filter", "bindVerb": "bind", "preemptVerb": "preempt"}
    assert entry["enableHTTPS"] is False
    assert entry["weight"] > 0
    managed = {r["name"]: r["ignoredByScheduler"] for r in entry["managedResources"]}
    # Kubelet counts units; memory is the extender's alone, so the scheduler must not check it against capacity.
    assert managed == {names.RESOURCE_VNPU: False, names.RESOURCE_VNPU_MEMORY: True}


@pytest.mark.parametrize(("best_nodes_only", "verb"), [(None, None), (True, None), (False, "prioritize")])
def test_prioritize_is_called_only_when_the_filter_passes_nodes_the_policy_ranks_apart(
    render: Render, best_nodes_only: bool | None, verb: str | None
) -> None:
    """bestNodesOnly (the default): the filter's answer holds only the nodes the policy scores 10, so a prioritize
    call could not tell them apart; without it every fitting node passes and prioritize ranks them."""
    values = {} if best_nodes_only is None else {"extender": {"bestNodesOnly": best_nodes_only}}
    assert extender_entry(render(values)).get("prioritizeVerb") == verb


def test_node_cache_capable_follows_values(default_manifests: list[Manifest], custom_manifests: list[Manifest]) -> None:
    assert extender_entry(default_manifests)["nodeCacheCapable"] is True
    assert extender_entry(custom_manifests)["nodeCacheCapable"] is False
    assert extender_entry(custom_manifests)["ignorable"] is True


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_url_prefix_reaches_the_extender(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    service = only(manifests, "Service", "extender")
    [port] = service["spec"]["ports"]
    name = service["metadata"]["name"]
    assert extender_entry(manifests)["urlPrefix"] == f"http://{name}.{NAMESPACE}.svc:{port['port']}"
    args = containers(only(manifests, "Deployment", "extender"))["extender"]["args"]
    assert f"--listen=0.0.0.0:{port['port']}" in args


def test_url_prefix_override(render: Render) -> None:
    url = "http://10.96.0.50:8888"
    entry = extender_entry(render({"scheduler": {"extender": {"urlPrefix": url}}}))
    assert entry["urlPrefix"] == url


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_second_scheduler_runs_the_rendered_configuration(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    values_name = "flexnpu-scheduler" if manifests_name == "default_manifests" else "npu-scheduler"
    config = scheduler_config(manifests)
    assert [p["schedulerName"] for p in config["profiles"]] == [values_name]
    assert config["leaderElection"] == {
        "leaderElect": True,
        "resourceName": values_name,
        "resourceNamespace": NAMESPACE,
    }
    deployment = only(manifests, "Deployment", "scheduler")
    scheduler = containers(deployment)["kube-scheduler"]
    assert scheduler["image"].startswith("registry.k8s.io/kube-scheduler:v1.")
    [config_flag] = [a for a in scheduler["command"] if a.startswith("--config=")]
    [mount] = scheduler["volumeMounts"]
    assert config_flag == f"--config={mount['mountPath']}/{CONFIG_KEY}"
    [volume] = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == only(manifests, "ConfigMap", "scheduler")["metadata"]["name"]


def test_default_scheduler_mode_renders_only_the_configuration(render: Render) -> None:
    manifests = render({"scheduler": {"mode": "default"}})
    assert find(manifests, "Deployment", "scheduler") == []
    config = scheduler_config(manifests)
    assert [p["schedulerName"] for p in config["profiles"]] == ["default-scheduler"]
    assert config["clientConnection"]["kubeconfig"] == "/etc/kubernetes/scheduler.conf"
    assert extender_entry(manifests)["bindVerb"] == "bind"


def scheduler_image(manifests: list[Manifest]) -> str:
    return str(containers(only(manifests, "Deployment", "scheduler"))["kube-scheduler"]["image"])


@pytest.mark.parametrize(
    ("cluster", "tag"),
    [("v1.31.4", "v1.31.4"), ("v1.33.2-eks-2d5f260", "v1.33.2"), ("v1.30.6+k3s1", "v1.30.6"), ("v1.37.2", "v1.37.2")],
)
def test_the_scheduler_image_follows_the_cluster(chart: helm.Chart, cluster: str, tag: str) -> None:
    # registry.k8s.io publishes upstream versions only: a distribution's suffix is dropped.
    assert scheduler_image(render_for_kube(chart, cluster)) == f"registry.k8s.io/kube-scheduler:{tag}"


def test_a_given_scheduler_tag_wins(chart: helm.Chart, custom_manifests: list[Manifest]) -> None:
    assert scheduler_image(custom_manifests) == "registry.k8s.io/kube-scheduler:v1.30.6"
    values = {"scheduler": {"image": {"tag": "v1.29.0"}}}
    assert scheduler_image(render_for_kube(chart, "v1.31.4", values)).endswith(":v1.29.0")
