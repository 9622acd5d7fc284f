"""The box's own pure helpers: how its container runtime maps mounted paths, and the fault tables."""

from __future__ import annotations

import pytest

from flexnpu_testsupport.box.faults import daemon_cases, device_plugin_cases, extender_cases
from flexnpu_testsupport.box.kubelet import host_value

MOUNTS = [("/usr/local/flexnpu/runtime", "/host/runtime"), ("/var/run/flexnpu", "/host/sock")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/usr/local/flexnpu/runtime", "/host/runtime"),
        ("/var/run/flexnpu/grant.sock", "/host/sock/grant.sock"),
        ("/var/run/flexnpux/grant.sock", "/var/run/flexnpux/grant.sock"),
        ("/usr/local/flexnpu/runtime:/opt/lib", "/host/runtime:/opt/lib"),
        ("0,1", "0,1"),
        ("high", "high"),
    ],
)
def test_container_paths_map_to_host_paths(value: str, expected: str) -> None:
    assert host_value(value, MOUNTS) == expected


def test_every_endpoint_gets_bad_input() -> None:
    verbs = {verb for verb, _ in extender_cases()}
    assert {"filter", "prioritize", "bind", "preempt"} <= verbs
    assert {path for _, path, _ in daemon_cases()} >= {"/device/register", "/device/unregister"}
    assert {rpc for rpc, _ in device_plugin_cases("npu-0000-c1-00-0-0")} >= {"Allocate", "GetPreferredAllocation"}
