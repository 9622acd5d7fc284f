"""Issue 10 case 10 on the real components: nothing left stuck when flexnpu leaves.

Every VNpuClaim carries the operator's finalizer ``flexnpu.io/deregister``; once the operator is gone nothing
removes it, and deleting the claim's namespace hangs. The chart's pre-delete hook (``files/release-claims.py``,
run here as a process with the token of the hook's own ServiceAccount and ClusterRole, as the hook Job runs it)
deletes every claim, lets a running operator deregister them, and removes only our finalizer from what is left.
Both cases on the real API server: the operator still running (the claim is deregistered from flexnpud and gone),
and the operator already gone (the finalizer is removed and the namespace being deleted finishes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from realk8s_cluster import ControlPlane
from realk8s_flexnpu import REPO, Flexnpu
from realk8s_procs import wait_for

from flexnpu import names
from flexnpu.claims import ClaimPhase

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

HOOK = REPO / "deploy" / "helm" / "flexnpu" / "files" / "release-claims.py"


def make_namespace(core: Any, namespace: str) -> None:
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))


def hand_claim(api: k8s.ApiClient, cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """A VNpuClaim written by hand (the register.sh replacement), once the operator has Registered it."""
    body = {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": cluster.node_name,
            "npu": 3,
            "aicoreAlloc": 1,
            "memoryMiB": 1024,
            "priority": "normal",
            "entity": name,
        },
    }
    custom = k8s.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, body)

    def registered() -> dict[str, Any] | None:
        claim: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
            names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL, name
        )
        return claim if (claim.get("status") or {}).get("phase") == ClaimPhase.REGISTERED.value else None

    claim: dict[str, Any] = wait_for(f"claim {name} Registered", registered, 120, watch=cluster.procs, interval=0.5)
    return claim


def run_hook(stack: Flexnpu, wait_seconds: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig_for("release-claims"))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(
        [sys.executable, str(HOOK), f"--wait-seconds={wait_seconds}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def claims_in(api: k8s.ApiClient, namespace: str) -> list[Any]:
    listed: Any = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
        names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL
    )
    return list(listed["items"])


def namespace_gone(core: Any, namespace: str) -> bool | None:
    try:
        core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return None


def test_the_release_hook_lets_a_running_operator_deregister_every_claim(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    stack, namespace = flexnpu_stack, "uninstall-live"
    make_namespace(core, namespace)
    claim = hand_claim(api, cluster, namespace, "by-hand")
    flexnpu_id = claim["status"]["flexnpuId"]
    assert flexnpu_id in stack.registrations()
    result = run_hook(stack, 60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not claims_in(api, namespace)
    assert flexnpu_id not in stack.registrations(), "the operator did not deregister the claim"
    core.delete_namespace(namespace)
    wait_for(f"namespace {namespace} gone", lambda: namespace_gone(core, namespace), 120, interval=0.5)


def test_the_release_hook_frees_a_namespace_the_gone_operator_would_hang(
    flexnpu_stack: Flexnpu, cluster: ControlPlane, core: Any, api: k8s.ApiClient
) -> None:
    stack, namespace = flexnpu_stack, "uninstall-orphaned"
    make_namespace(core, namespace)
    claim = hand_claim(api, cluster, namespace, "orphan")
    [operator] = [p for p in cluster.procs if p.name == "operator"]
    operator.stop()
    cluster.procs.remove(operator)
    try:
        core.delete_namespace(namespace)
        # The namespace is Terminating and its claim keeps our finalizer: nobody would remove it.
        [held] = claims_in(api, namespace)
        assert held["metadata"]["uid"] == claim["metadata"]["uid"]
        assert "flexnpu.io/deregister" in held["metadata"]["finalizers"]
        assert core.read_namespace(namespace).status.phase == "Terminating"
        result = run_hook(stack, 0)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "finalizer flexnpu.io/deregister removed" in result.stdout, result.stdout
        wait_for(f"namespace {namespace} gone", lambda: namespace_gone(core, namespace), 120, interval=0.5)
    finally:
        stack.start_operator()
