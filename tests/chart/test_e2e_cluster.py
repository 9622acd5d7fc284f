"""Opt-in end to end on a real cluster with 910B nodes and the chart installed (deploy/README.md, "Check it").

Runs only when FLEXNPU_E2E_KUBECONFIG names a kubeconfig (see tests/conftest.py). It applies
deploy/examples/pod-vnpu.yaml in a fresh namespace, waits for the pod to run, and checks the handshake on the
way: the extender's card assignment on the pod, and the pod's VNpuClaim registered with the node daemon.
Optional: FLEXNPU_E2E_IMAGE replaces the example's image, FLEXNPU_E2E_TIMEOUT (seconds, default 300).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from chart_support import EXAMPLES_DIR, load_yaml_docs

from flexnpu import names
from flexnpu_testsupport import waiting

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

T = TypeVar("T")
POLL_SECONDS = 2.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll ``probe`` every POLL_SECONDS (a real API server) until it returns something."""

    def boxed() -> tuple[T] | None:  # a found value may be falsy: wait_for stops at a truthy one
        found = probe()
        return None if found is None else (found,)

    return waiting.wait_for(what, boxed, timeout, interval=POLL_SECONDS)[0]


@pytest.fixture(scope="module")
def api_client() -> Iterator[Any]:
    kubeconfig = os.environ.get("FLEXNPU_E2E_KUBECONFIG")
    if not kubeconfig:
        pytest.skip("FLEXNPU_E2E_KUBECONFIG is not set")
    from kubernetes import config

    client: Any = config.new_client_from_config(config_file=kubeconfig)
    yield client
    client.close()


@pytest.fixture
def namespace(api_client: Any) -> Iterator[str]:
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    name = f"flexnpu-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_example_pod_runs_on_a_vnpu(api_client: Any, namespace: str) -> None:
    from kubernetes import client

    core: Any = client.CoreV1Api(api_client)
    custom: Any = client.CustomObjectsApi(api_client)
    timeout = float(os.environ.get("FLEXNPU_E2E_TIMEOUT", "300"))
    [pod] = load_yaml_docs(EXAMPLES_DIR / "pod-vnpu.yaml")
    if os.environ.get("FLEXNPU_E2E_IMAGE"):
        pod["spec"]["containers"][0]["image"] = os.environ["FLEXNPU_E2E_IMAGE"]
    name = pod["metadata"]["name"]
    core.create_namespaced_pod(namespace, pod)

    def running() -> Any:
        current = core.read_namespaced_pod(name, namespace)
        assert current.status.phase not in ("Failed", "Succeeded"), current.status
        return current if current.status.phase == "Running" else None

    current = wait_for(f"pod {namespace}/{name} to run", running, timeout)
    assert names.ANNOTATION_ASSIGNED in current.metadata.annotations
    assert current.metadata.annotations.get(names.ANNOTATION_BIND_PHASE) == "allocated"

    def registered_claim() -> Any:
        claims = custom.list_namespaced_custom_object(names.CRD_GROUP, names.CRD_VERSION, namespace, names.CRD_PLURAL)[
            "items"
        ]
        mine = [c for c in claims if c["spec"].get("podRef", {}).get("uid") == current.metadata.uid]
        return mine[0] if mine and mine[0].get("status", {}).get("phase") == "Registered" else None

    claim = wait_for("the pod's VNpuClaim to be Registered", registered_claim, timeout)
    assert claim["spec"]["nodeName"] == current.spec.node_name
    assert claim["spec"]["memoryMiB"] == 16384
