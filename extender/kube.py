"""The extender's only door to the Kubernetes API server: aiohttp against the REST API.

Credentials come from the ``kubernetes`` client's own config loader, as for the device plugin
(``flexnpu.deviceplugin.kube``) and the operator (kopf's ``login_via_client``): ``--kubeconfig`` when given, else
``KUBECONFIG`` (a ``:``-separated list of files, merged), else ``~/.kube/config`` when it exists, else the pod's
service account; ``--context`` picks a context. Tokens from exec plugins (EKS, GKE, OIDC helpers) and the service
account's rotating token are refreshed through the loader's ``refresh_api_key_hook``: the Authorization header is
asked of the loaded ``kubernetes.client.Configuration`` for every request. Only the loading uses the ``kubernetes``
package; the requests themselves stay on aiohttp (asyncio, streaming watches).

It offers the few calls the extender makes: list and watch (nodes, pods), get, create, merge-patch. aiohttp's
errors and the API server's Status answers become :class:`KubeApiError` and its subclasses here, so nothing above
this module sees an aiohttp or kubernetes type.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes.client
import kubernetes.config
import yaml
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

from flexnpu.errors import ConfigError, FlexnpuError
from flexnpu.extender.pods import PodKey
from flexnpu.extender.writes import binding
from flexnpu.names import CRD_GROUP, CRD_PLURAL, CRD_VERSION

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")
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
    """Where the API server is and how to authenticate; ``authorization`` (when set) gives the current
    Authorization header value for each request, ``token`` a fixed bearer token otherwise."""

    server: str
    token: str = ""
    ca_pem: str = ""
    client_cert_pem: str = ""
    client_key_pem: str = ""
    insecure: bool = False
    namespace: str = "default"
    authorization: Callable[[], str] | None = field(default=None, compare=False, repr=False)

    def authorization_header(self) -> str:
        if self.authorization is not None:
            return self.authorization()
        return f"Bearer {self.token}" if self.token else ""


def load_kube_config(
    kubeconfig: Path | None,
    context: str | None,
    env: Mapping[str, str],
    *,
    account_dir: Path = SERVICE_ACCOUNT_DIR,
    home_kubeconfig: Path = DEFAULT_KUBECONFIG,
) -> KubeConfig:
    """The credentials ``kubectl`` would use, in its order (see the module docstring); ConfigError naming the file
    (or the service account directory) when they cannot be loaded."""
    files = str(kubeconfig) if kubeconfig is not None else env.get("KUBECONFIG", "")
    if not files and home_kubeconfig.expanduser().exists():
        files = str(home_kubeconfig.expanduser())
    if files:
        return load_kubeconfig(files, context)
    return in_cluster_config(env, account_dir)


def load_kubeconfig(files: str | Path, context: str | None = None) -> KubeConfig:
    """``context`` (default: current-context) of a kubeconfig file, or of ``:``-separated files merged."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(files), context=context, client_configuration=configuration, persist_config=False
        )
        contexts, active = kubernetes.config.list_kube_config_contexts(str(files))  # type: ignore[no-untyped-call]
    except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError("kubeconfig", str(files), f"cannot be used ({exc})") from exc
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    namespace = str(((chosen or {}).get("context") or {}).get("namespace") or "default")
    return _from_configuration(configuration, namespace, str(files))


def in_cluster_config(env: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """The pod's service account, as the ``kubernetes`` client finds it (its token re-read as it rotates)."""
    if not env.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError("kubeconfig", "", "not given and not running in a cluster (no KUBERNETES_SERVICE_HOST)")
    configuration = kubernetes.client.Configuration()
    try:
        InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=str(account_dir / "token"), cert_filename=str(account_dir / "ca.crt"), environ=env
        ).load_and_set(configuration)
        namespace = (account_dir / "namespace").read_text(encoding="utf-8").strip()
    except (ConfigException, OSError, ValueError) as exc:
        raise ConfigError("serviceaccount", str(account_dir), f"cannot be used ({exc})") from exc
    return _from_configuration(configuration, namespace, str(account_dir))


def _from_configuration(configuration: kubernetes.client.Configuration, namespace: str, source: str) -> KubeConfig:
    """Our connection settings from a loaded Configuration; the token stays with it (its refresh hook)."""

    def authorization() -> str:
        try:
            value = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        except (ConfigException, OSError, ValueError) as exc:  # an exec plugin that fails on refresh
            raise KubeApiError(0, "Unauthorized", f"credentials of {source} cannot be refreshed ({exc})") from exc
        return str(value or "")

    host = str(configuration.host or "").rstrip("/")
    if not host:
        raise ConfigError("kubeconfig", source, "names no API server")
    try:
        return KubeConfig(
            server=host,
            ca_pem=_read_file(configuration.ssl_ca_cert),
            client_cert_pem=_read_file(configuration.cert_file),
            client_key_pem=_read_file(configuration.key_file),
            insecure=not configuration.verify_ssl,
            namespace=namespace or "default",
            authorization=authorization,
        )
    except OSError as exc:
        raise ConfigError("kubeconfig", source, f"a file it names cannot be read ({exc})") from exc


def _read_file(path: object) -> str:
    if not isinstance(path, str) or not path:
        return ""
    return Path(path).read_text(encoding="utf-8")


class KubeApi:
    """An async client for the calls the extender makes. Use as ``async with KubeApi(config) as api``."""

    def __init__(self, config: KubeConfig, *, timeout_s: float = 10.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        headers = {"Accept": "application/json", "User-Agent": "flexnpu-extender"}
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
            async with self._open().get(path, params=params, timeout=timeout, headers=self._auth()) as response:
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
        headers |= self._auth()
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

    def _auth(self) -> dict[str, str]:
        """The Authorization header as of now (an exec plugin's or a rotated token is refreshed by the loader)."""
        value = self.config.authorization_header()
        return {"Authorization": value} if value else {}

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

    async def bind_pod(self, key: PodKey, node: str, annotations: Mapping[str, str] | None = None) -> None:
        path = f"/api/v1/namespaces/{key.namespace}/pods/{key.name}/binding"
        await self.api.create(path, binding(key, node, annotations))

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
