"""The extender's only door to the Kubernetes API server: aiohttp against the REST API, no client library.

Reads a kubeconfig (token, client certificate or none; exec plugins are not supported) or the in-cluster service
account, and offers the few calls the extender makes: list and watch (nodes, pods), get, create, merge-patch.
aiohttp's errors and the API server's Status answers become :class:`KubeApiError` and its subclasses here, so
nothing above this module sees an aiohttp type.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from flexnpu.errors import ConfigError, FlexnpuError
from flexnpu.extender.pods import PodKey
from flexnpu.extender.writes import binding
from flexnpu.names import CRD_GROUP, CRD_PLURAL, CRD_VERSION

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(FlexnpuError):
    """The API server refused a call, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if status else f"unreachable: {message}")


class KubeNotFound(KubeApiError):
    pass


class KubeConflict(KubeApiError):
    """409: the object exists already, or changed since it was read."""


class KubeGone(KubeApiError):
    """410: a watch asked for a resourceVersion too old; list again."""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    token: str = ""
    ca_pem: str = ""
    client_cert_pem: str = ""
    client_key_pem: str = ""
    insecure: bool = False
    namespace: str = "default"


def load_kubeconfig(path: Path, context: str | None = None) -> KubeConfig:
    """The cluster, user and namespace of ``context`` (default: current-context) of a kubeconfig file."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("kubeconfig", str(path), f"cannot be read ({exc})") from exc
    name = context or doc.get("current-context")
    ctx = _named(doc, "contexts", name, path).get("context") or {}
    cluster = _named(doc, "clusters", ctx.get("cluster"), path).get("cluster") or {}
    user = _named(doc, "users", ctx.get("user"), path).get("user") or {} if ctx.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError("kubeconfig", str(path), f"cluster {ctx.get('cluster')!r} has no server")
    base = path.parent
    return KubeConfig(
        server=server.rstrip("/"),
        token=str(user.get("token") or _read(base, user.get("tokenFile")) or ""),
        ca_pem=_pem(cluster.get("certificate-authority-data"), base, cluster.get("certificate-authority")),
        client_cert_pem=_pem(user.get("client-certificate-data"), base, user.get("client-certificate")),
        client_key_pem=_pem(user.get("client-key-data"), base, user.get("client-key")),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=str(ctx.get("namespace") or "default"),
    )


def in_cluster_config(env: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """The pod's service account, as every in-cluster client finds it."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError("kubeconfig", "", "not given and not running in a cluster (no KUBERNETES_SERVICE_HOST)")
    host = f"[{host}]" if ":" in host else host
    try:
        token = (account_dir / "token").read_text(encoding="utf-8").strip()
        ca = (account_dir / "ca.crt").read_text(encoding="utf-8")
        namespace = (account_dir / "namespace").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("serviceaccount", str(account_dir), f"cannot be read ({exc.strerror})") from exc
    return KubeConfig(server=f"https://{host}:{port}", token=token, ca_pem=ca, namespace=namespace)


class KubeApi:
    """An async client for the calls the extender makes. Use as ``async with KubeApi(config) as api``."""

    def __init__(self, config: KubeConfig, *, timeout_s: float = 10.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        headers = {"Accept": "application/json", "User-Agent": "flexnpu-extender"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        connector = aiohttp.TCPConnector(ssl=_ssl_context(self.config), limit=64)
        self._session = aiohttp.ClientSession(self.config.server, headers=headers, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str) -> dict[str, Any]:
        return await self._call("GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("POST", path, body)

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): ``None`` values delete keys."""
        return await self._call("PATCH", path, body, content_type=MERGE_PATCH)

    async def delete(self, path: str) -> dict[str, Any]:
        return await self._call("DELETE", path)

    async def list(self, path: str) -> tuple[list[dict[str, Any]], str]:
        """Every object under ``path`` and the list's resourceVersion (to watch from)."""
        body = await self._call("GET", path)
        items = body.get("items") or []
        return list(items), str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self, path: str, resource_version: str = "", timeout_s: int = 300
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) as the server streams them, until the server ends the watch."""
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_s)}
        if resource_version and resource_version.isdigit():
            params["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s + 30)
        try:
            async with self._open().get(path, params=params, timeout=timeout) as response:
                await _raise_for_status(response)
                async for line in response.content:
                    event = _event(line)
                    if event is not None:
                        yield event
        except aiohttp.ClientError as exc:
            raise KubeApiError(0, "Unreachable", str(exc) or type(exc).__name__) from exc

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, content_type: str = "application/json"
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with self._open().request(
                method, path, data=data, headers=headers, timeout=self._timeout
            ) as response:
                await _raise_for_status(response)
                result = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise KubeApiError(0, "Unreachable", str(exc) or type(exc).__name__) from exc
        except TimeoutError as exc:
            raise KubeApiError(0, "Timeout", f"{method} {path} timed out") from exc
        except ValueError as exc:
            raise KubeApiError(0, "BadResponse", f"{method} {path}: answer is not JSON") from exc
        return result if isinstance(result, dict) else {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("KubeApi is used outside 'async with'")
        return self._session


def _event(line: bytes) -> tuple[str, dict[str, Any]] | None:
    text = line.strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise KubeApiError(0, "BadWatch", f"watch line is not JSON: {text[:80]!r}") from exc
    kind, obj = event.get("type"), event.get("object")
    if kind == "ERROR":
        status = obj if isinstance(obj, dict) else {}
        raise _error(int(status.get("code") or 500), str(status.get("reason") or ""), str(status.get("message")))
    if not isinstance(kind, str) or not isinstance(obj, dict):
        return None
    return kind, obj


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    try:
        status = await response.json(content_type=None)
    except ValueError:
        status = {}
    status = status if isinstance(status, dict) else {}
    raise _error(
        response.status,
        str(status.get("reason") or response.reason or ""),
        str(status.get("message") or f"{response.method} {response.url.path}"),
    )


def _error(status: int, reason: str, message: str) -> KubeApiError:
    cls = {404: KubeNotFound, 409: KubeConflict, 410: KubeGone}.get(status, KubeApiError)
    return cls(status, reason, message)


def _ssl_context(config: KubeConfig) -> ssl.SSLContext | bool:
    if not config.server.startswith("https://"):
        return False
    if config.insecure:
        return False
    context = ssl.create_default_context(cadata=config.ca_pem or None)
    if not config.ca_pem:
        context.load_default_certs()
    if config.client_cert_pem and config.client_key_pem:
        _load_client_cert(context, config.client_cert_pem, config.client_key_pem)
    return context


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str) -> None:
    """ssl loads key pairs only from files: write them to a private temporary directory for the call."""
    with tempfile.TemporaryDirectory(prefix="flexnpu-kube-") as tmp:
        cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
        cert_path.write_text(cert, encoding="utf-8")
        key_path.write_text(key, encoding="utf-8")
        os.chmod(key_path, 0o600)
        context.load_cert_chain(cert_path, key_path)


def _named(doc: Mapping[str, Any], section: str, name: object, path: Path) -> Mapping[str, Any]:
    for entry in doc.get(section) or []:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return entry
    raise ConfigError("kubeconfig", str(path), f"has no {section[:-1]} named {name!r}")


def _pem(data: object, base: Path, file: object) -> str:
    if isinstance(data, str) and data:
        return base64.b64decode(data).decode()
    return _read(base, file)


def _read(base: Path, file: object) -> str:
    if not isinstance(file, str) or not file:
        return ""
    try:
        return (base / file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("kubeconfig", file, f"cannot be read ({exc.strerror})") from exc


class KubeWriter:
    """The bind's API calls (:class:`flexnpu.extender.writes.ClusterWriter`) over a :class:`KubeApi`."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return await self.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        await self.api.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"annotations": dict(annotations)}}
        )

    async def bind_pod(self, key: PodKey, node: str) -> None:
        await self.api.create(f"/api/v1/namespaces/{key.namespace}/pods/{key.name}/binding", binding(key, node))

    async def create_claim(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create the claim; one that exists already for the same pod (a retried bind) counts as created."""
        path = f"/apis/{CRD_GROUP}/{CRD_VERSION}/namespaces/{namespace}/{CRD_PLURAL}"
        try:
            await self.api.create(path, body)
        except KubeConflict:
            existing = await self.api.get(f"{path}/{body['metadata']['name']}")
            if (existing.get("spec") or {}).get("podRef") != (body.get("spec") or {}).get("podRef"):
                raise

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self.api.create(f"/api/v1/namespaces/{namespace}/events", body)
