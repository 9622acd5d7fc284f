"""The commands the chart runs are ones the components accept: each container's args go through that
component's own argument parser, and the operator's environment through its own settings loader."""

from __future__ import annotations

import re
from typing import Any

import pytest
from chart_support import Manifest, containers, only

from flexnpu.cli import COMMANDS
from flexnpu.deviceplugin import main as deviceplugin_main
from flexnpu.extender import main as extender_main
from flexnpu.operator import main as operator_main
from flexnpu.operator.settings import ENV_PREFIX, OperatorSettings
from flexnpu.settings import load_settings
from flexnpu.shim.daemon import main as daemon_main

PARSERS: dict[str, Any] = {
    "deviceplugin": deviceplugin_main.parser(),
    "extender": extender_main.parser(),
    "operator": operator_main.parser(),
    "daemon": daemon_main.parser("flexnpu daemon"),
}
ENV_REFERENCE = re.compile(r"\$\((\w+)\)")


def our_commands(manifests: list[Manifest]) -> list[list[str]]:
    """The argument lists of every container running the flexnpu image's entry point (no command override)."""
    return [
        c["args"]
        for m in manifests
        if m["kind"] in ("Deployment", "DaemonSet")
        for c in m["spec"]["template"]["spec"]["containers"]
        if "command" not in c
    ]


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_every_command_parses(manifests_name: str, request: pytest.FixtureRequest) -> None:
    commands = our_commands(request.getfixturevalue(manifests_name))
    assert sorted(args[0] for args in commands) == ["daemon", "deviceplugin", "extender", "operator"]
    for subcommand, *args in commands:
        assert subcommand in COMMANDS
        expanded = [ENV_REFERENCE.sub("from-the-downward-api", a) for a in args]
        PARSERS[subcommand].parse_args(expanded)


def test_device_plugin_settings_from_the_rendered_args(custom_manifests: list[Manifest]) -> None:
    [_, *args] = containers(only(custom_manifests, "DaemonSet", "node"))["device-plugin"]["args"]
    settings = deviceplugin_main.load([ENV_REFERENCE.sub("node-1", a) for a in args])
    assert (settings.units_per_card, settings.oversubscription, settings.node_name) == (100, 2.5, "node-1")


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_operator_settings_from_the_rendered_env(manifests_name: str, request: pytest.FixtureRequest) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    operator = containers(only(manifests, "Deployment", "operator"))["operator"]
    env = {e["name"]: e["value"] for e in operator["env"] if "value" in e}
    settings = load_settings(OperatorSettings, env=env, env_prefix=ENV_PREFIX)
    daemonset = only(manifests, "DaemonSet", "node")
    daemon = containers(daemonset)["flexnpud"]
    [port] = daemon["ports"]
    assert (settings.daemon_port_name, settings.daemon_port) == (port["name"], port["containerPort"])
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    selector = dict(pair.split("=") for pair in settings.daemon_selector.split(","))
    assert selector.items() <= pod_labels.items()
    host_network = daemonset["spec"]["template"]["spec"]["hostNetwork"]
    assert settings.daemon_address.value == ("host-ip" if host_network else "pod-ip")


def test_operator_replicas_peer_through_one_cluster_peering(
    default_manifests: list[Manifest], custom_manifests: list[Manifest]
) -> None:
    single = containers(only(default_manifests, "Deployment", "operator"))["operator"]["args"]
    assert "--standalone" in single and not [m for m in default_manifests if m["kind"] == "ClusterKopfPeering"]
    deployment = only(custom_manifests, "Deployment", "operator")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    args = containers(deployment)["operator"]["args"]
    assert "--standalone" not in args
    peering = only(custom_manifests, "ClusterKopfPeering")
    assert f"--peering={peering['metadata']['name']}" in args
    assert operator_main.parser().parse_args(args[1:]).peering == peering["metadata"]["name"]
    role = only(custom_manifests, "ClusterRole", "operator")
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in role["rules"]
