"""Every synced extender replica is a Service endpoint: each advertises its pod IP (the leader publishes it in the
Lease), standbys forward binds there, and the forwarding gives up before kube-scheduler's httpTimeout."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chart_support import Manifest, Render, containers, only

from flexnpu.extender import main as extender_main
from flexnpu.extender.settings import ENV_PREFIX, ExtenderSettings
from flexnpu.settings import load_settings


def extender_container(manifests: list[Manifest]) -> Manifest:
    return containers(only(manifests, "Deployment", "extender"))["extender"]


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_each_replica_advertises_its_pod_ip_and_listen_port(
    manifests_name: str, request: pytest.FixtureRequest
) -> None:
    container = extender_container(request.getfixturevalue(manifests_name))
    env = {e["name"]: e for e in container["env"]}
    host = f"{ENV_PREFIX}ADVERTISE_HOST"  # a setting straight from the downward API: no $(VAR) in the args
    assert env[host]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    [_, *args] = container["args"]
    flags = vars(extender_main.parser().parse_args(args))
    flags = {k: v for k, v in flags.items() if k not in ("config", "log_level")}
    settings = load_settings(ExtenderSettings, flags=flags, env={host: "10.4.0.7"}, env_prefix=ENV_PREFIX)
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert extender_main.advertise_url(settings) == f"http://10.4.0.7:{port}"
    assert settings.forward_timeout == 4.5 and settings.leader_elect


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_readiness_is_the_extenders_readyz(manifests_name: str, request: pytest.FixtureRequest) -> None:
    probe = extender_container(request.getfixturevalue(manifests_name))["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "http"}


def test_the_extender_service_publishes_only_ready_replicas(custom_manifests: list[Manifest]) -> None:
    service = only(custom_manifests, "Service", "extender")
    assert not service["spec"].get("publishNotReadyAddresses")  # ready = synced and able to bind or forward


def forwarding(timeout: Any, http_timeout: str) -> dict[str, Any]:
    extender = {"forwardTimeoutSeconds": timeout, "bindWaitSeconds": 0.25}  # a bind waits less than it is forwarded
    return {"extender": extender, "scheduler": {"extender": {"httpTimeout": http_timeout}}}


@pytest.mark.parametrize(
    ("timeout", "http_timeout"), [(4.5, "5s"), (2, "2500ms"), (30, "1m"), (9, "1m30s"), (0.5, "1.5s")]
)
def test_a_forward_timeout_below_the_schedulers_renders(render: Render, timeout: float, http_timeout: str) -> None:
    args = extender_container(render(forwarding(timeout, http_timeout)))["args"]
    assert f"--forward-timeout={timeout}" in args


@pytest.mark.parametrize(("timeout", "http_timeout"), [(5, "5s"), (6, "5s"), (3, "3000ms"), (60, "1m")])
def test_a_forward_timeout_at_or_above_the_schedulers_fails_the_render(
    render: Render, timeout: float, http_timeout: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match="forwardTimeoutSeconds"):
        render(forwarding(timeout, http_timeout))


@pytest.mark.parametrize("timeout", [0, -1, 61, "4"])
def test_a_forward_timeout_outside_the_schema_is_rejected(render: Render, timeout: Any) -> None:
    with pytest.raises(helm.HelmValuesError, match="forwardTimeoutSeconds"):
        render({"extender": {"forwardTimeoutSeconds": timeout}})


def test_bind_wait_and_allocation_timeout_reach_the_extenders_settings(default_manifests: list[Manifest]) -> None:
    [_, *args] = extender_container(default_manifests)["args"]
    flags = vars(extender_main.parser().parse_args(args))
    flags = {k: v for k, v in flags.items() if k not in ("config", "log_level")}
    settings = load_settings(ExtenderSettings, flags=flags, env={}, env_prefix=ENV_PREFIX)
    assert settings.bind_wait == 3 and settings.allocation_timeout == 30


def test_custom_bind_wait_and_allocation_timeout_render(render: Render) -> None:
    args = extender_container(render({"extender": {"bindWaitSeconds": 1.5, "allocationTimeoutSeconds": 120}}))["args"]
    assert "--bind-wait=1.5" in args and "--allocation-timeout=120" in args


@pytest.mark.parametrize(("value", "expected"), [(None, True), (False, False), (True, True)])
def test_best_nodes_only_reaches_the_extender_settings(render: Render, value: bool | None, expected: bool) -> None:
    values = {} if value is None else {"extender": {"bestNodesOnly": value}}
    args = extender_container(render(values))["args"][1:]
    flags = vars(extender_main.parser().parse_args(args))
    flags = {k: v for k, v in flags.items() if k not in ("config", "log_level")}
    assert load_settings(ExtenderSettings, flags=flags, env={}, env_prefix=ENV_PREFIX).best_nodes_only is expected


@pytest.mark.parametrize(("wait", "forward"), [(5, 4.5), (4.5, 4.5)])
def test_a_bind_wait_at_or_above_the_forward_timeout_fails_the_render(
    render: Render, wait: float, forward: float
) -> None:
    with pytest.raises(helm.HelmRenderError, match=rf"bindWaitSeconds \({wait}\)"):
        render({"extender": {"bindWaitSeconds": wait, "forwardTimeoutSeconds": forward}})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bindWaitSeconds", -1),
        ("bindWaitSeconds", 61),
        ("allocationTimeoutSeconds", 0),
        ("allocationTimeoutSeconds", "30"),
    ],
)
def test_bind_wait_and_allocation_timeout_outside_the_schema_are_rejected(
    render: Render, field: str, value: Any
) -> None:
    with pytest.raises(helm.HelmValuesError, match=field):
        render({"extender": {field: value}})
