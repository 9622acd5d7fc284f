"""What the chart reads from the cluster on an upgrade (Helm's ``lookup``), rendered against kmock, the API
emulator, through Helm's cluster-aware render (helm_python.Config.render: only ``lookup`` contacts the server).

The webhook's certificate Secret is reused as it is, so caBundle keeps trusting the running extenders; the
cluster-wide VNpuClaim CRD is rendered only by the release that owns it, or when it does not exist yet.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kmock
import pytest
from chart_support import NAMESPACE, RELEASE, Manifest, find, only, parse_manifests

from flexnpu import names
from flexnpu_testsupport.kubeemulator import KubeEmulator

SECRET = f"{RELEASE}-webhook-tls"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubeEmulator, Path]]:
    emulator = KubeEmulator()
    emulator.start()

    async def declare() -> None:
        resources = emulator.emulator.resources
        resources["v1/secrets"] = kmock.ResourceInfo(
            kind="Secret", namespaced=True, singular="secret", verbs={"list", "get", "create"}
        )
        resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition",
            namespaced=False,
            singular="customresourcedefinition",
            verbs={"list", "get", "create"},
        )

    asyncio.run_coroutine_threadsafe(declare(), emulator.loop).result(timeout=10)
    try:
        yield emulator, emulator.kubeconfig(tmp_path)
    finally:
        emulator.stop()


def render_against(chart: helm.Chart, kubeconfig: Path, values: dict[str, Any] | None = None) -> list[Manifest]:
    with helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE) as config:
        return parse_manifests(config.render(chart, values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_an_upgrade_keeps_the_webhook_certificate(chart: helm.Chart, cluster: tuple[KubeEmulator, Path]) -> None:
    emulator, kubeconfig = cluster
    data = {"tls.crt": b64("serving"), "tls.key": b64("key"), "ca.crt": b64("ca")}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE}, "data": data}
    emulator.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    manifests = render_against(chart, kubeconfig)
    [rendered] = [s for s in find(manifests, "Secret", "webhook") if s["metadata"]["name"] == SECRET]
    assert rendered["data"] == data
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert {h["clientConfig"]["caBundle"] for h in only(manifests, kind, "webhook")["webhooks"]} == {b64("ca")}


def test_an_incomplete_secret_is_replaced(chart: helm.Chart, cluster: tuple[KubeEmulator, Path]) -> None:
    emulator, kubeconfig = cluster
    data = {"tls.crt": b64("serving"), "tls.key": b64("key")}  # no ca.crt: caBundle could not be filled
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE}, "data": data}
    emulator.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    [rendered] = [s for s in find(render_against(chart, kubeconfig), "Secret", "webhook")]
    assert rendered["data"]["tls.crt"] != data["tls.crt"] and rendered["data"]["ca.crt"]


def crd(annotations: dict[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": names.CRD_NAME}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": metadata}


OWNERS = [
    (None, False),  # made from crds/ by an earlier version of the chart: no owner, left alone
    ({"meta.helm.sh/release-name": "other", "meta.helm.sh/release-namespace": NAMESPACE}, False),
    ({"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": "elsewhere"}, False),
    ({"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}, True),
]


@pytest.mark.parametrize(("owner", "rendered"), OWNERS, ids=["unowned", "other-release", "other-namespace", "ours"])
def test_the_claim_crd_is_rendered_only_by_its_owner(
    chart: helm.Chart, cluster: tuple[KubeEmulator, Path], owner: dict[str, str] | None, rendered: bool
) -> None:
    emulator, kubeconfig = cluster
    emulator.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd(owner))
    found = find(render_against(chart, kubeconfig), "CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in found] == ([names.CRD_NAME] if rendered else [])


def test_a_first_install_renders_the_crd(chart: helm.Chart, cluster: tuple[KubeEmulator, Path]) -> None:
    _, kubeconfig = cluster
    assert [c["metadata"]["name"] for c in find(render_against(chart, kubeconfig), "CustomResourceDefinition")] == [
        names.CRD_NAME
    ]
