"""The admission webhook over real HTTPS: a serving certificate for 127.0.0.1 signed by the test's own CA.

Reviews go in as the API server sends them; hostile bodies get 400/413 with a JSON error naming the field; the
extender process serves the webhook beside its verbs when ``webhook_listen`` is set, and refuses bad TLS settings
at start with one line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
from aiohttp import web

from flexnpu.errors import ConfigError
from flexnpu.extender.core.admission import AdmissionPolicy
from flexnpu.extender.main import kube_config, main, serve
from flexnpu.extender.settings import ExtenderSettings
from flexnpu.extender.webhook import make_webhook_app, server_tls
from flexnpu.names import ANNOTATION_PRIORITY, RESOURCE_VNPU
from flexnpu.waiting import free_port

LIMIT = 64 * 1024


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, serving certificate for IP 127.0.0.1, its key) made with openssl."""
    ca_key, ca, key, csr, cert, ext = (directory / n for n in ("ca.key", "ca.crt", "tls.key", "csr", "tls.crt", "ext"))
    for path in (ca_key, key):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=webhook-test-ca", "-days", "1",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", "-out",
             str(ca))  # fmt: skip
    ext.write_text("extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n", encoding="ascii")
    _openssl("req", "-new", "-key", str(key), "-subj", "/CN=flexnpu-webhook", "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
             "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


@pytest.fixture()
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_pki(tmp_path)


@pytest.fixture()
async def client(pki: tuple[Path, Path, Path]) -> AsyncIterator[aiohttp.ClientSession]:
    ca, _, _ = pki
    trust = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session:
        yield session


@pytest.fixture()
async def webhook(pki: tuple[Path, Path, Path]) -> AsyncIterator[str]:
    """The webhook app on 127.0.0.1 over TLS; its base URL."""
    _, cert, key = pki
    runner = web.AppRunner(make_webhook_app(AdmissionPolicy(), max_body_bytes=LIMIT))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls(cert, key)).start()
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


def review(pod: dict[str, Any], operation: str = "CREATE", uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": operation,
            "namespace": "team",
            "object": pod,
        },
    }


def vnpu_pod(priority: str | None = None, units: object = 3) -> dict[str, Any]:
    notes = {ANNOTATION_PRIORITY: priority} if priority is not None else {}
    return {
        "metadata": {"name": "infer", "annotations": notes},
        "spec": {
            "schedulerName": "default-scheduler",
            "containers": [{"name": "c", "resources": {"limits": {RESOURCE_VNPU: units}}}],
        },
    }


async def post(client: aiohttp.ClientSession, url: str, body: bytes | object) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_mutate_answers_with_a_json_patch(client: aiohttp.ClientSession, webhook: str) -> None:
    status, answer = await post(client, f"{webhook}/mutate", review(vnpu_pod()))
    assert status == 200 and answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "uid-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert patch == [{"op": "add", "path": "/spec/schedulerName", "value": "flexnpu-scheduler"}]


async def test_validate_refuses_with_the_field_and_value(client: aiohttp.ClientSession, webhook: str) -> None:
    status, answer = await post(client, f"{webhook}/validate", review(vnpu_pod("urgent"), uid="uid-2"))
    assert status == 200
    response = answer["response"]
    assert response["uid"] == "uid-2" and response["allowed"] is False
    assert f"metadata.annotations[{ANNOTATION_PRIORITY}]='urgent'" in response["status"]["message"]
    _, answer = await post(client, f"{webhook}/validate", review(vnpu_pod("high")))
    assert answer["response"]["allowed"] is False and answer["response"]["status"]["code"] == 403
    _, answer = await post(client, f"{webhook}/validate", review(vnpu_pod(units="2.5")))
    assert "huawei.com/vnpu]='2.5'" in answer["response"]["status"]["message"]
    _, answer = await post(client, f"{webhook}/validate", review(vnpu_pod("low")))
    assert answer["response"] == {"uid": "uid-1", "allowed": True}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 413, "exceeds the limit"),
        (b"[" * 30_000 + b"]" * 30_000, 400, "nested too deeply"),
        (b"[1]", 400, "body='[1]': must be a JSON object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, 400, "apiVersion"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Status"}, 400, "kind='Status'"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}, 400, "request.uid"),
        (b"x" * (LIMIT + 1), 413, "exceeds the limit"),
    ],
)
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
async def test_hostile_bodies_get_a_clear_4xx(
    client: aiohttp.ClientSession, webhook: str, path: str, body: object, status: int, needle: str
) -> None:
    got, answer = await post(client, webhook + path, body)
    assert got == status and needle in answer["error"]


async def test_a_streamed_body_past_the_limit_is_413(client: aiohttp.ClientSession, webhook: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 1024 + 2):
            yield b" " * 1024

    async with client.post(f"{webhook}/mutate", data=chunks()) as resp:
        assert resp.status == 413 and "exceeds the limit" in (await resp.json())["error"]


async def test_the_webhook_speaks_tls_only(webhook: str) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.post(webhook.replace("https", "http") + "/mutate", data=b"{}") as resp:
                await resp.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not trusted without the test's CA
            await plain.post(f"{webhook}/mutate", data=b"{}")


def test_server_tls_names_the_unusable_file(pki: tuple[Path, Path, Path]) -> None:
    ca, cert, _ = pki
    with pytest.raises(ConfigError, match="webhook_key_file='/nonexistent'"):
        server_tls(cert, Path("/nonexistent"))
    with pytest.raises(ConfigError, match="webhook_cert_file/webhook_key_file"):
        server_tls(cert, ca)  # a certificate where the key should be


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--webhook-listen", "127.0.0.1:8443"], "webhook_cert_file=None: must be set when webhook_listen is"),
        (["--webhook-listen", "8443", "--webhook-cert-file", "c", "--webhook-key-file", "k"], "listen='8443'"),
        (["--webhook-listen", "127.0.0.1:1", "--webhook-cert-file", "/no", "--webhook-key-file", "/no"], "'/no'"),
        (["--scheduler-name", ""], "scheduler_name=''"),
        (["--high-priority-min-value", "lots"], "--high-priority-min-value"),
    ],
)
def test_bad_webhook_settings_exit_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--api-server", "http://127.0.0.1:1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_settings_build_the_admission_policy() -> None:
    settings = ExtenderSettings(
        scheduler_name="s",
        units_per_card=20,
        high_priority_namespaces=("a", "b"),
        high_priority_classes=("gold",),
        high_priority_min_value=5,
    )
    policy = settings.admission
    assert (policy.scheduler_name, policy.units.units_per_card, policy.high_min_priority) == ("s", 20, 5)
    assert policy.high_namespaces == {"a", "b"} and policy.high_priority_classes == {"gold"}


async def test_the_extender_process_serves_the_webhook(
    kube: kmock.KubernetesEmulator, pki: tuple[Path, Path, Path], client: aiohttp.ClientSession
) -> None:
    _, cert, key = pki
    port = free_port()
    settings = ExtenderSettings(
        listen=f"127.0.0.1:{free_port()}",
        api_server=str(kube.url),
        leader_elect=False,
        webhook_listen=f"127.0.0.1:{port}",
        webhook_cert_file=cert,
        webhook_key_file=key,
        scheduler_name="npu-scheduler",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, kube_config(settings, {}), stop))
    try:
        answer = await _first_answer(client, f"https://127.0.0.1:{port}/mutate", review(vnpu_pod()))
        patch = json.loads(base64.b64decode(answer["response"]["patch"]))
        assert patch[0]["value"] == "npu-scheduler"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    with pytest.raises(aiohttp.ClientConnectorError):  # closed with the extender
        await client.post(f"https://127.0.0.1:{port}/mutate", data=b"{}")


async def _first_answer(client: aiohttp.ClientSession, url: str, body: object) -> Any:
    for _ in range(200):
        with contextlib.suppress(aiohttp.ClientConnectorError):
            status, answer = await post(client, url, body)
            assert status == 200, answer
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")
