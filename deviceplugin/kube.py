"""The device plugin's only Kubernetes API adapter: read the pods bound to this node, write the handshake.

Pods are read as raw JSON (no client models: they are slow to build and must not reach the core). Every
client error leaves this module as KubeError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from flexnpu import names
from flexnpu.annotations import Inventory, encode_inventory
from flexnpu.deviceplugin.core.allocation import PodRef
from flexnpu.deviceplugin.core.containers import PodClaim
from flexnpu.deviceplugin.core.pods import NodePod, read_node_pods, read_pod_claims
from flexnpu.errors import FlexnpuError
from flexnpu.kubeclient import LOADER_ERRORS, load_configuration

log = logging.getLogger(__name__)
_TIMEOUT = 5.0


class KubeError(FlexnpuError):
    """The Kubernetes API could not be reached or refused a request (``status``: its HTTP status, if it answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WatchExpired(KubeError):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class KubeApi:
    """Pods and the node object of one node, through one API client."""

    def __init__(self, api_client: kubernetes.client.ApiClient, node_name: str) -> None:
        self._client = api_client
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self.node_name = node_name

    @classmethod
    def connect(cls, node_name: str, kubeconfig: Path | None = None) -> KubeApi:
        """A client built by the ``kubernetes`` config loader (flexnpu.kubeclient: kubeconfig, KUBECONFIG,
        ~/.kube/config, in-cluster)."""
        try:
            return cls(kubernetes.client.ApiClient(load_configuration(kubeconfig)), node_name)
        except LOADER_ERRORS as exc:
            raise KubeError(f"cannot configure the Kubernetes client ({exc})") from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def node_pods(self, pending_only: bool = False) -> list[NodePod]:
        """The unfinished pods bound to this node that ask for units; with ``pending_only`` those in phase
        Pending alone (the API server selects them: kubelet admits, and calls Allocate for, pods in that phase
        only, and a node's running pods are most of the list and of the JSON to decode)."""
        selector = f"spec.nodeName={self.node_name}"
        if pending_only:
            selector += ",status.phase=Pending"
        body = self._call(
            "list pods", self._core.list_pod_for_all_namespaces, field_selector=selector, _preload_content=False
        )
        items: list[Mapping[str, Any]] = json.loads(body.data).get("items") or []
        return read_node_pods(items, self.node_name)

    def annotate_pod(self, pod: PodRef, annotations: Mapping[str, str | None]) -> None:
        """Merge ``annotations`` into the pod's (None removes one): the handshake's writes."""
        self._patch_pod(pod, annotations)

    def pod_claims(self, pod: PodRef) -> list[PodClaim]:
        """The pod's VNpuClaims (label ``flexnpu.io/pod-uid``) with the registration id each is registered under."""
        selector = f"{names.LABEL_CLAIM_POD_UID}={pod.uid}"
        body = self._call(
            f"list claims of pod {pod}",
            self._custom.list_namespaced_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            pod.namespace,
            names.CRD_PLURAL,
            label_selector=selector,
            _preload_content=False,
        )
        try:
            items = json.loads(body.data).get("items")
        except (ValueError, AttributeError) as exc:
            raise KubeError(f"list claims of pod {pod}: not a JSON list ({exc})") from exc
        return read_pod_claims(items if isinstance(items, list) else [], pod, self.node_name)

    def node_claims(self) -> tuple[list[Mapping[str, Any]], str]:
        """Every VNpuClaim of this node (the CRD's selectable field ``spec.nodeName``) and the list's
        resourceVersion, to watch from. HTTP 400 means the API server cannot select claims by node."""
        body = self._node_claims_call("list claims of this node")
        try:
            listed = json.loads(body.data)
            items, version = listed.get("items"), listed.get("metadata", {}).get("resourceVersion")
        except (ValueError, AttributeError) as exc:
            raise KubeError(f"list claims of this node: not a JSON list ({exc})") from exc
        if not isinstance(version, str) or not version:
            raise KubeError("list claims of this node: no resourceVersion")
        return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else [], version

    def watch_node_claims(self, version: str, timeout_s: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(event type, claim) as the server streams them from ``version`` until it ends the watch (after
        ``timeout_s``); BOOKMARK events carry only the resourceVersion. WatchExpired when ``version`` is too old."""
        response = self._node_claims_call(
            "watch claims of this node",
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            watch=True,
            request_timeout=(_TIMEOUT, timeout_s + 30),  # the server ends it after timeout_s
        )
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not line or line.isspace():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise KubeError(f"watch claims of this node: not JSON ({line[:80]!r})") from exc
                kind, obj = event.get("type"), event.get("object")
                if not isinstance(kind, str) or not isinstance(obj, Mapping):
                    raise KubeError(f"watch claims of this node: not an event ({line[:80]!r})")
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise WatchExpired(f"watch claims of this node: {obj.get('message')}", 410)
                    raise KubeError(f"watch claims of this node: {obj.get('message')}", code)
                yield kind, obj
        except (HTTPError, OSError) as exc:
            raise KubeError(f"watch claims of this node: {exc}") from exc
        finally:
            response.close()
            response.release_conn()

    def _node_claims_call(self, what: str, **kwargs: Any) -> Any:
        """The raw response of a list (or, with ``watch=True``, a watch) of this node's VNpuClaims."""
        return self._call(
            what,
            self._custom.list_cluster_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            names.CRD_PLURAL,
            field_selector=f"spec.nodeName={self.node_name}",
            _preload_content=False,
            **kwargs,
        )

    def publish_inventory(self, inventory: Inventory) -> None:
        """The node's ``flexnpu.io/inventory`` annotation, read by the extender."""
        body = {"metadata": {"annotations": {names.ANNOTATION_INVENTORY: encode_inventory(inventory)}}}
        self._write("patch node", self._core.patch_node, self.node_name, body)

    def mark_claims_released(self, when: str) -> None:
        """The node's ``flexnpu.io/claims-released`` annotation: a node update for kube-scheduler's queue."""
        body = {"metadata": {"annotations": {names.ANNOTATION_CLAIMS_RELEASED: when}}}
        self._write("patch node", self._core.patch_node, self.node_name, body)

    def _patch_pod(self, pod: PodRef, annotations: Mapping[str, str | None]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        self._write(f"patch pod {pod}", self._core.patch_namespaced_pod, pod.name, pod.namespace, body)

    def _write(self, what: str, method: Any, *args: Any) -> None:
        """A merge patch whose answer is drained, not decoded: a V1Pod model costs more than the round trip."""
        response = self._call(what, method, *args, _content_type="application/merge-patch+json", _preload_content=False)
        response.data  # noqa: B018 - reading the body returns the connection to the pool

    def _call(self, what: str, method: Any, *args: Any, request_timeout: Any = _TIMEOUT, **kwargs: Any) -> Any:
        try:
            return method(*args, _request_timeout=request_timeout, **kwargs)
        except ApiException as exc:
            raise KubeError(f"{what}: HTTP {exc.status} {exc.reason}", exc.status) from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise KubeError(f"{what}: {exc}") from exc
