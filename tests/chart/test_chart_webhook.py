"""The admission webhook in the chart (issue 10 case 5): configurations, Service, TLS and the extender's flags.

The configurations must be the ones tests/realk8s/test_webhook.py runs against the real kube-apiserver (its CEL
match conditions are read from that file and compared), point at a Service that reaches every extender replica on
the port the extender serves HTTPS on, and carry a caBundle that verifies the serving certificate for the
Service's DNS name (checked with an in-memory TLS handshake). The extender's rendered flags are parsed by the
extender's own parser and settings loader, and the examples' pods are judged by the resulting policy.
"""

from __future__ import annotations

import base64
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from chart_support import (
    EXAMPLES_DIR,
    NAMESPACE,
    REPO,
    Manifest,
    Render,
    containers,
    find,
    load_yaml_docs,
    only,
)

from flexnpu import names
from flexnpu.extender.core.admission import AdmissionPolicy, AdmissionRequest, validate
from flexnpu.extender.main import parser
from flexnpu.extender.settings import ENV_PREFIX, ExtenderSettings
from flexnpu.settings import load_settings

CONFIG_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
REALK8S_TEST = REPO / "tests" / "realk8s" / "test_webhook.py"
CERT_MANAGER = {"webhook": {"certManager": {"enabled": True}}}


def webhooks(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Every webhook of both configurations, by webhook name."""
    return {h["name"]: h for kind in CONFIG_KINDS for h in only(manifests, kind, "webhook")["webhooks"]}


def extender(manifests: list[Manifest]) -> Manifest:
    return containers(only(manifests, "Deployment", "extender"))["extender"]


def flag(container: Manifest, name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"{name}=")]
    assert len(values) <= 1, name
    return values[0] if values else None


def realk8s_expressions() -> dict[str, str]:
    """REQUESTS_VNPU, NAMES_PRIORITY and PRIORITY_CHANGED as tests/realk8s/test_webhook.py builds them."""
    source = REALK8S_TEST.read_text(encoding="utf-8")
    start = source.index('_VNPU = "')
    end = source.index("\n", source.index("PRIORITY_CHANGED = "))
    scope: dict[str, Any] = {}
    exec(source[start:end], scope)  # the constant definitions only: string literals and f-strings
    return {k: scope[k] for k in ("REQUESTS_VNPU", "NAMES_PRIORITY", "PRIORITY_CHANGED")}


def test_the_configurations_are_the_ones_tested_on_the_real_api_server(default_manifests: list[Manifest]) -> None:
    hooks = webhooks(default_manifests)
    assert set(hooks) == {"scheduler-name.flexnpu.io", "pods.flexnpu.io"}
    expected = realk8s_expressions()
    mutate, check = hooks["scheduler-name.flexnpu.io"], hooks["pods.flexnpu.io"]
    assert mutate["matchConditions"] == [{"name": "requests-vnpu", "expression": expected["REQUESTS_VNPU"]}]
    assert check["matchConditions"] == [
        {"name": "flexnpu-pod", "expression": f"{expected['REQUESTS_VNPU']} || {expected['NAMES_PRIORITY']}"},
        {"name": "priority-changed-on-update", "expression": expected["PRIORITY_CHANGED"]},
    ]
    assert [r["operations"] for r in mutate["rules"]] == [["CREATE"]]
    assert [r["operations"] for r in check["rules"]] == [["CREATE", "UPDATE"]]
    for hook in hooks.values():
        [rule] = hook["rules"]
        assert (rule["apiGroups"], rule["apiVersions"], rule["resources"]) == ([""], ["v1"], ["pods"])
        assert (hook["failurePolicy"], hook["sideEffects"], hook["admissionReviewVersions"]) == ("Fail", "None", ["v1"])
        assert hook["timeoutSeconds"] == 10
        [expression] = hook["namespaceSelector"]["matchExpressions"]
        assert expression == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", NAMESPACE],
        }
    assert mutate["reinvocationPolicy"] == "Never"
    assert (mutate["clientConfig"]["service"]["path"], check["clientConfig"]["service"]["path"]) == (
        "/mutate",
        "/validate",
    )


@pytest.mark.parametrize("manifests_name", ["default_manifests", "custom_manifests"])
def test_the_service_reaches_every_extender_replica_on_the_webhook_port(
    manifests_name: str, request: pytest.FixtureRequest
) -> None:
    manifests: list[Manifest] = request.getfixturevalue(manifests_name)
    service = only(manifests, "Service", "webhook")
    # Readiness of the extender means "leads and binds"; the webhook is served by every replica.
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = only(manifests, "Deployment", "extender")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    container = extender(manifests)
    [container_port] = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    listen = flag(container, "--webhook-listen")
    assert listen == f"0.0.0.0:{container_port['containerPort']}"
    for hook in webhooks(manifests).values():
        target = hook["clientConfig"]["service"]
        assert (target["name"], target["namespace"], target["port"]) == (
            service["metadata"]["name"],
            NAMESPACE,
            port["port"],
        )


def custom_extender_settings(container: Manifest) -> ExtenderSettings:
    """The extender's settings from the rendered args, through its own parser and loader."""
    args = vars(parser().parse_args(container["args"][1:]))
    flags = {k: v for k, v in args.items() if k not in ("config", "log_level")}
    return load_settings(ExtenderSettings, flags=flags, env={}, file=None, env_prefix=ENV_PREFIX)


def test_the_extender_serves_the_policy_of_the_values(custom_manifests: list[Manifest]) -> None:
    settings = custom_extender_settings(extender(custom_manifests))
    assert settings.admission == AdmissionPolicy(
        scheduler_name="npu-scheduler",
        units=settings.units,
        high_namespaces=frozenset({"prod", "infer"}),
        high_priority_classes=frozenset({"gold"}),
        high_min_priority=5000,
    )
    assert settings.units.units_per_card == 100
    hooks = webhooks(custom_manifests).values()
    assert {(h["failurePolicy"], h["timeoutSeconds"]) for h in hooks} == {("Ignore", 5)}
    for hook in hooks:
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", NAMESPACE, "batch"]


def test_the_default_scheduler_mode_keeps_pods_on_the_default_scheduler(render: Render) -> None:
    container = extender(render({"scheduler": {"mode": "default"}}))
    assert flag(container, "--scheduler-name") == "default-scheduler"


def mounted_secret(manifests: list[Manifest]) -> tuple[str, str]:
    """(Secret name, mount path) of the extender's certificate volume; the cert and key flags point into it."""
    spec = only(manifests, "Deployment", "extender")["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if "secret" in v]
    container = extender(manifests)
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert flag(container, "--webhook-cert-file") == f"{mount['mountPath']}/tls.crt"
    assert flag(container, "--webhook-key-file") == f"{mount['mountPath']}/tls.key"
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]  # 0440 files readable
    return str(volume["secret"]["secretName"]), str(mount["mountPath"])


def handshake(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, hostname: str, tmp_path: Path) -> None:
    """A TLS handshake in memory: the API server's side trusts only ``ca_pem`` and checks ``hostname``."""
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    client = client_context.wrap_bio(pipes[0][0], pipes[0][1], server_hostname=hostname)
    server = server_context.wrap_bio(pipes[1][0], pipes[1][1], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        pipes[1][0].write(pipes[0][1].read())  # client -> server
        pipes[0][0].write(pipes[1][1].read())  # server -> client
        if all(done.values()):
            return
    raise AssertionError("the TLS handshake did not finish")


def test_helm_generated_certificate_is_trusted_by_the_ca_bundle(
    default_manifests: list[Manifest], tmp_path: Path
) -> None:
    secret_name, _ = mounted_secret(default_manifests)
    [secret] = [s for s in find(default_manifests, "Secret", "webhook") if s["metadata"]["name"] == secret_name]
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    bundles = {h["clientConfig"]["caBundle"] for h in webhooks(default_manifests).values()}
    assert bundles == {secret["data"]["ca.crt"]}
    service = only(default_manifests, "Service", "webhook")["metadata"]["name"]
    # The API server calls https://<service>.<namespace>.svc and checks the certificate against caBundle.
    handshake(data["ca.crt"], data["tls.crt"], data["tls.key"], f"{service}.{NAMESPACE}.svc", tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(data["ca.crt"], data["tls.crt"], data["tls.key"], f"elsewhere.{NAMESPACE}.svc", tmp_path)


def test_every_render_without_a_cluster_makes_a_new_ca(render: Render) -> None:
    # What `lookup` prevents on a real upgrade (templates/webhook.yaml): offline, each render is a first install.
    bundles = [{h["clientConfig"]["caBundle"] for h in webhooks(render()).values()} for _ in range(2)]
    assert len(bundles[0]) == 1 and bundles[0] != bundles[1]


def test_cert_manager_issues_the_certificate_and_injects_its_ca(render: Render) -> None:
    manifests = render(CERT_MANAGER)
    secret_name, _ = mounted_secret(manifests)
    assert find(manifests, "Secret", "webhook") == []
    certificates = {c["metadata"]["name"]: c for c in find(manifests, "Certificate", "webhook")}
    [serving] = [c for c in certificates.values() if c["spec"]["secretName"] == secret_name]
    service = only(manifests, "Service", "webhook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    assert "server auth" in serving["spec"]["usages"]
    inject = f"{NAMESPACE}/{serving['metadata']['name']}"
    for kind in CONFIG_KINDS:
        configuration = only(manifests, kind, "webhook")
        assert configuration["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": inject}
        assert all("caBundle" not in h["clientConfig"] for h in configuration["webhooks"])
    # The chart's own chain: self-signed Issuer -> CA Certificate -> CA Issuer -> the serving certificate.
    issuers = {i["metadata"]["name"]: i["spec"] for i in find(manifests, "Issuer", "webhook")}
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    ca_certificate = certificates[ca_issuer["ca"]["secretName"]]
    assert ca_certificate["spec"]["isCA"] is True
    assert issuers[ca_certificate["spec"]["issuerRef"]["name"]] == {"selfSigned": {}}


def test_cert_manager_with_an_existing_issuer_creates_none(render: Render) -> None:
    issuer = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    manifests = render({"webhook": {"certManager": {"enabled": True, "issuerRef": issuer}}})
    assert find(manifests, "Issuer") == []
    [certificate] = find(manifests, "Certificate")
    assert certificate["spec"]["issuerRef"] == issuer


@pytest.mark.parametrize("values", [{"webhook": {"enabled": False}}, {"mode": "dra"}], ids=["disabled", "dra"])
def test_no_webhook_when_disabled_or_in_dra_mode(render: Render, values: dict[str, Any]) -> None:
    manifests = render(values)
    assert [m for m in manifests if m["kind"] in CONFIG_KINDS] == []
    assert find(manifests, "Service", "webhook") == [] and find(manifests, "Secret", "webhook") == []
    for deployment in find(manifests, "Deployment", "extender"):
        container = containers(deployment)["extender"]
        assert not any(a.startswith("--webhook") for a in container["args"])
        assert "volumes" not in deployment["spec"]["template"]["spec"]


def test_the_priority_class_is_the_webhook_threshold(
    default_manifests: list[Manifest], custom_manifests: list[Manifest], render: Render
) -> None:
    for manifests, value in ((default_manifests, 1_000_000), (custom_manifests, 5000)):
        priority_class = only(manifests, "PriorityClass", "webhook")
        assert (priority_class["metadata"]["name"], priority_class["value"]) == ("flexnpu-high", value)
        assert priority_class["globalDefault"] is False
        assert flag(extender(manifests), "--high-priority-min-value") == str(value)
    assert find(render({"highPriority": {"priorityClass": {"create": False}}}), "PriorityClass") == []


def admitted(pod: Manifest, policy: AdmissionPolicy, priority_classes: dict[str, int]) -> tuple[bool, str]:
    """The validating decision on ``pod`` as the API server would send it: spec.priority filled in from its
    PriorityClass by the Priority admission plugin, which runs before validating webhooks."""
    spec = dict(pod["spec"])
    spec["priority"] = priority_classes.get(spec.get("priorityClassName", ""), 0)
    obj = {**pod, "spec": spec}
    verdict = validate(AdmissionRequest(uid="u", kind="Pod", operation="CREATE", namespace="default", obj=obj), policy)
    return verdict.allowed, verdict.message


def example_pods() -> list[Manifest]:
    pods = []
    for path in ("pod-vnpu.yaml", "vllm-shared-card.yaml"):
        for doc in load_yaml_docs(EXAMPLES_DIR / path):
            pods.append(doc if doc["kind"] == "Pod" else {"metadata": doc["spec"]["template"]["metadata"],
                                                           "spec": doc["spec"]["template"]["spec"]})  # fmt: skip
    return pods


def test_the_examples_pass_the_webhook_of_the_default_chart(default_manifests: list[Manifest]) -> None:
    settings = custom_extender_settings(extender(default_manifests))
    classes = {p["metadata"]["name"]: p["value"] for p in find(default_manifests, "PriorityClass")}
    pods = example_pods()
    assert any(p["metadata"]["annotations"][names.ANNOTATION_PRIORITY] == "high" for p in pods)
    for pod in pods:
        assert admitted(pod, settings.admission, classes) == (True, "")
        without_class = {**pod, "spec": {k: v for k, v in pod["spec"].items() if k != "priorityClassName"}}
        allowed, message = admitted(without_class, settings.admission, classes)
        if pod["metadata"]["annotations"][names.ANNOTATION_PRIORITY] == "high":
            assert not allowed and re.search(r"'high': not allowed", message)
