"""Issue 10 case 5 on the real kube-apiserver: the admission webhook served by the extender process.

An extender runs with the chart's args plus ``--webhook-listen`` and a serving certificate for 127.0.0.1 signed
by this test's own CA; a MutatingWebhookConfiguration and a ValidatingWebhookConfiguration (the ones proposed for
the chart: ``failurePolicy: Fail``, CEL ``matchConditions``), scoped by a namespaceSelector to the test's
namespace, point the API server at it. A vnpu pod that names no scheduler comes back with flexnpu's and is placed
by the extender; ``flexnpu.io/priority: high`` is refused without a PriorityClass of value >= 1000000 and admitted
with one; unknown priorities and unit counts the cards cannot hold are refused naming field and value.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from realk8s_cluster import ControlPlane
from realk8s_flexnpu import Flexnpu, container_args, only, replace_flags
from realk8s_procs import Proc, http_ok, wait_for

from flexnpu import names
from flexnpu.waiting import free_port

pytestmark = [pytest.mark.realk8s, pytest.mark.timeout(600)]

NAMESPACE = "webhook-test"
IMAGE = "realk8s.local/process:1"
HIGH_CLASS = "flexnpu-high"
WEBHOOK_NAME = "flexnpu-webhook-test"

_VNPU = "'huawei.com/vnpu'"
_ASKS = (
    f"has(c.resources) && (has(c.resources.limits) && {_VNPU} in c.resources.limits"
    f" || has(c.resources.requests) && {_VNPU} in c.resources.requests)"
)
REQUESTS_VNPU = (
    f"object.spec.containers.exists(c, {_ASKS})"
    f" || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, {_ASKS}))"
)
_PRIORITY = "'flexnpu.io/priority'"


def _priority_of(obj: str) -> str:
    return (
        f"(has({obj}.metadata.annotations) && {_PRIORITY} in {obj}.metadata.annotations"
        f" ? {obj}.metadata.annotations[{_PRIORITY}] : '')"
    )


NAMES_PRIORITY = f"has(object.metadata.annotations) && {_PRIORITY} in object.metadata.annotations"
PRIORITY_CHANGED = f"request.operation != 'UPDATE' || {_priority_of('object')} != {_priority_of('oldObject')}"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, serving certificate for IP 127.0.0.1, its key): the test's own CA, not the cluster's."""
    directory.mkdir(exist_ok=True)
    ca_key, ca, key, csr, cert, ext = (directory / n for n in ("ca.key", "ca.crt", "tls.key", "csr", "tls.crt", "ext"))
    for path in (ca_key, key):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=flexnpu-webhook-ca", "-days", "1",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", "-out",
             str(ca))  # fmt: skip
    ext.write_text("extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n", encoding="ascii")
    _openssl("req", "-new", "-key", str(key), "-subj", "/CN=flexnpu-webhook", "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
             "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


def webhook_configurations(port: int, ca: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's two configurations, with the URL of the test's extender and the namespace of the test."""
    common = {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 10,
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
    }
    bundle = base64.b64encode(ca.read_bytes()).decode("ascii")
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [
            {
                "name": "scheduler-name.flexnpu.io",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "matchConditions": [{"name": "requests-vnpu", "expression": REQUESTS_VNPU}],
                "reinvocationPolicy": "Never",
                **common,
            }
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [
            {
                "name": "pods.flexnpu.io",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/validate", "caBundle": bundle},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods"],
                    }
                ],
                "matchConditions": [
                    {"name": "flexnpu-pod", "expression": f"{REQUESTS_VNPU} || {NAMES_PRIORITY}"},
                    {"name": "priority-changed-on-update", "expression": PRIORITY_CHANGED},
                ],
                **common,
            }
        ],
    }
    return mutating, validating


def start_webhook_extender(stack: Flexnpu, cluster: ControlPlane, pki: tuple[Path, Path, Path]) -> tuple[Proc, int]:
    """A second extender with the chart's args, no leader election (it only serves the webhook here)."""
    ca, cert, key = pki
    port = free_port()
    args = replace_flags(
        container_args(only(stack.manifests, "Deployment", "extender"), "extender"),
        {
            "--listen": f"127.0.0.1:{free_port()}",
            "--namespace": stack.namespace,
            "--leader-elect": "false",
            "--identity": "extender-webhook",
            "--kubeconfig": str(stack.kubeconfig_for("extender")),
            "--webhook-listen": f"127.0.0.1:{port}",
            "--webhook-cert-file": str(cert),
            "--webhook-key-file": str(key),
        },
    )
    proc = cluster.spawn("extender-webhook", [stack.flexnpu, *args])
    trust = ssl.create_default_context(cafile=str(ca))
    url = f"https://127.0.0.1:{port}/healthz"
    wait_for("webhook /healthz over TLS", lambda: http_ok(url, trust), 120, watch=[proc])
    return proc, port


def pod(name: str, units: int = 2, priority: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if priority is not None:
        meta["annotations"] = {names.ANNOTATION_PRIORITY: priority}
    body = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "main",
                "image": IMAGE,
                "command": ["/bin/sleep", "3600"],
                "resources": {"limits": {names.RESOURCE_VNPU: str(units)}},
            }
        ],
        **spec,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


@pytest.fixture(scope="module")
def webhook(flexnpu_stack: Flexnpu, cluster: ControlPlane, api: k8s.ApiClient, core: Any) -> Iterator[int]:
    """The webhook extender running and registered for NAMESPACE; all removed afterwards (configurations first,
    so that nothing else meets a webhook that is going away)."""
    admission: Any = k8s.AdmissionregistrationV1Api(api)
    scheduling: Any = k8s.SchedulingV1Api(api)
    proc, port = start_webhook_extender(flexnpu_stack, cluster, make_pki(cluster.work / "webhook-pki"))
    mutating, validating = webhook_configurations(port, cluster.work / "webhook-pki" / "ca.crt")
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    try:
        # The chart's flexnpu-high PriorityClass (Flexnpu.install_rbac_and_crds applied it) at the threshold.
        assert scheduling.read_priority_class(HIGH_CLASS).value == 1_000_000
        admission.create_mutating_webhook_configuration(mutating)
        admission.create_validating_webhook_configuration(validating)
        wait_for(
            f"ServiceAccount {NAMESPACE}/default",
            lambda: core.read_namespaced_service_account("default", NAMESPACE),
            120,
            watch=cluster.procs,
            interval=0.5,
        )
        wait_for("the API server calling the webhook", lambda: _mutated(core), 60, watch=[proc], interval=0.5)
        yield port
    finally:
        for delete in (
            admission.delete_mutating_webhook_configuration,
            admission.delete_validating_webhook_configuration,
        ):
            _quietly(delete, WEBHOOK_NAME)
        _quietly(core.delete_namespace, NAMESPACE)
        proc.stop()


def _quietly(delete: Any, *args: Any) -> None:
    try:
        delete(*args)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _mutated(core: Any) -> bool | None:
    """A dry-run create (our webhooks declare sideEffects None) answers with flexnpu's scheduler once the API
    server has loaded the configurations."""
    created = core.create_namespaced_pod(NAMESPACE, pod("probe"), dry_run="All")
    return True if created.spec.scheduler_name == "flexnpu-scheduler" else None


def refusal(core: Any, body: dict[str, Any]) -> str:
    """The API server's message when it refuses ``body``."""
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod(NAMESPACE, body)
    assert exc.value.status in (400, 403), exc.value.body
    return str(json.loads(exc.value.body or "{}")["message"])


def test_a_vnpu_pod_without_scheduler_gets_flexnpus_and_is_placed(
    webhook: int, core: Any, cluster: ControlPlane
) -> None:
    created = core.create_namespaced_pod(NAMESPACE, pod("no-scheduler"))
    assert created.spec.scheduler_name == "flexnpu-scheduler"

    def assigned() -> Any:
        got = core.read_namespaced_pod("no-scheduler", NAMESPACE)
        notes = got.metadata.annotations or {}
        return got if got.spec.node_name and names.ANNOTATION_ASSIGNED in notes else None

    placed = wait_for("the extender's assignment", assigned, 180, watch=cluster.procs, interval=0.5)
    assert placed.spec.node_name == cluster.node_name
    plain = core.create_namespaced_pod(NAMESPACE, pod("other-scheduler", schedulerName="volcano"))
    assert plain.spec.scheduler_name == "volcano"  # left alone, with a warning to the client
    for name in ("no-scheduler", "other-scheduler"):
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


def test_high_priority_needs_a_priority_class(webhook: int, core: Any) -> None:
    message = refusal(core, pod("high-refused", priority="high"))
    assert "denied the request" in message
    assert "metadata.annotations[flexnpu.io/priority]='high': not allowed" in message
    assert "PriorityClass of value >= 1000000" in message
    admitted = core.create_namespaced_pod(
        NAMESPACE, pod("high-admitted", priority="high", priorityClassName=HIGH_CLASS)
    )
    assert admitted.spec.priority == 1_000_000 and admitted.metadata.annotations[names.ANNOTATION_PRIORITY] == "high"
    core.delete_namespaced_pod("high-admitted", NAMESPACE, grace_period_seconds=0)


def test_unknown_priority_and_bad_units_are_refused(webhook: int, core: Any) -> None:
    message = refusal(core, pod("urgent", priority="urgent"))
    assert "metadata.annotations[flexnpu.io/priority]='urgent': must be one of high, normal, low" in message
    message = refusal(core, pod("thirteen", units=13))
    assert "huawei.com/vnpu=13: must be 1..10" in message


def test_a_hand_edited_priority_is_judged(webhook: int, core: Any) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("edited", priority="low"))
    try:
        with pytest.raises(ApiException) as exc:
            core.patch_namespaced_pod(
                "edited", NAMESPACE, {"metadata": {"annotations": {names.ANNOTATION_PRIORITY: "high"}}}
            )
        assert "'high': not allowed" in json.loads(exc.value.body or "{}")["message"]
        core.patch_namespaced_pod("edited", NAMESPACE, {"metadata": {"labels": {"touched": "yes"}}})  # not judged
    finally:
        core.delete_namespaced_pod("edited", NAMESPACE, grace_period_seconds=0)
