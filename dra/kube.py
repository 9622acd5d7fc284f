"""The DRA plugin's only Kubernetes API adapter: GET a ResourceClaim as raw JSON, post an Event on a claim.

Credentials come from the ``kubernetes`` config loader: ``kubeconfig`` when given, else ``KUBECONFIG``, else
``~/.kube/config`` when it exists, else the in-cluster service account. Every client error leaves as KubeError.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from flexnpu import names
from flexnpu.errors import FlexnpuError
from flexnpu.kubeclient import LOADER_ERRORS, load_configuration

_TIMEOUT = 5.0


class KubeError(FlexnpuError):
    """The API could not be reached, refused, or the claim is not the one kubelet named."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClaimApi:
    def __init__(self, api_client: kubernetes.client.ApiClient, node_name: str) -> None:
        self._client = api_client
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self.node_name = node_name

    @property
    def api_client(self) -> kubernetes.client.ApiClient:
        """The client this adapter was built with (shared with the slice publisher: one credential per process)."""
        return self._client

    @classmethod
    def connect(cls, node_name: str, kubeconfig: Path | None = None) -> ClaimApi:
        """A client built by the ``kubernetes`` config loader (flexnpu.kubeclient: kubeconfig, KUBECONFIG,
        ~/.kube/config, in-cluster)."""
        try:
            return cls(kubernetes.client.ApiClient(load_configuration(kubeconfig)), node_name)
        except LOADER_ERRORS as exc:
            raise KubeError(f"cannot configure the Kubernetes client ({exc})") from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def claim(self, namespace: str, name: str, uid: str) -> Mapping[str, Any]:
        """The claim as JSON; KubeError when it is gone or its UID is not ``uid`` (deleted and recreated)."""
        what = f"get resourceclaim {namespace}/{name}"
        try:
            response: Any = self._custom.get_namespaced_custom_object(
                "resource.k8s.io",
                "v1",
                namespace,
                "resourceclaims",
                name,
                _preload_content=False,
                _request_timeout=_TIMEOUT,
            )
            body = json.loads(response.data)
        except ApiException as exc:
            raise KubeError(f"{what}: HTTP {exc.status} {exc.reason}", exc.status) from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise KubeError(f"{what}: {exc}") from exc
        if not isinstance(body, dict):
            raise KubeError(f"{what}: not a JSON object")
        actual = (body.get("metadata") or {}).get("uid")
        if actual != uid:
            raise KubeError(f"{what}: its uid is {actual!r}, kubelet asked for {uid!r}")
        return body

    def refuse(self, namespace: str, name: str, uid: str, reason: str) -> None:
        """A Warning Event on the claim saying why it was not prepared (best effort: errors are KubeError)."""
        now = datetime.datetime.now(datetime.UTC)
        body: Any = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "namespace": namespace,
                "name": name,
                "uid": uid,
            },
            "type": "Warning",
            "reason": "PrepareFailed",
            "message": reason[:1024],
            "source": {"component": names.DRA_DRIVER, "host": self.node_name},
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self._core.create_namespaced_event(namespace, body, _request_timeout=_TIMEOUT, _preload_content=False)
        except ApiException as exc:
            raise KubeError(f"event on {namespace}/{name}: HTTP {exc.status} {exc.reason}", exc.status) from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise KubeError(f"event on {namespace}/{name}: {exc}") from exc
