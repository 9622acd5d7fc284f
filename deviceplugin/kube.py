"""The device plugin's only Kubernetes API adapter: read the pods bound to this node, write the handshake.

Pods are read as raw JSON (no client models: they are slow to build and must not reach the core). Every
client error leaves this module as KubeError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from flexnpu import names
from flexnpu.annotations import (
    BindPhase,
    CardAssignment,
    Inventory,
    encode_allocated_containers,
    encode_assignment,
    encode_inventory,
)
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

    def node_pods(self) -> list[NodePod]:
        """The unfinished pods bound to this node that ask for units."""
        selector = f"spec.nodeName={self.node_name}"
        body = self._call(
            "list pods", self._core.list_pod_for_all_namespaces, field_selector=selector, _preload_content=False
        )
        items: list[Mapping[str, Any]] = json.loads(body.data).get("items") or []
        return read_node_pods(items, self.node_name)

    def record_allocation(
        self, pod: PodRef, assignment: Sequence[CardAssignment], served: Sequence[str], *, done: bool
    ) -> None:
        """Progress of the handshake: the pod's cards, the containers served; ``allocated`` after the last one."""
        notes: dict[str, str | None] = {
            names.ANNOTATION_ASSIGNED: encode_assignment(assignment),
            names.ANNOTATION_ALLOCATED_CONTAINERS: encode_allocated_containers(served),
        }
        if done:
            notes |= {names.ANNOTATION_BIND_PHASE: BindPhase.ALLOCATED.value, names.ANNOTATION_BIND_REASON: None}
        self._patch_pod(pod, notes)

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
        return read_pod_claims(items if isinstance(items, list) else [], pod)

    def record_failure(self, pod: PodRef, reason: str) -> None:
        self._patch_pod(
            pod, {names.ANNOTATION_BIND_PHASE: BindPhase.FAILED.value, names.ANNOTATION_BIND_REASON: reason}
        )

    def publish_inventory(self, inventory: Inventory) -> None:
        """The node's ``flexnpu.io/inventory`` annotation, read by the extender."""
        body = {"metadata": {"annotations": {names.ANNOTATION_INVENTORY: encode_inventory(inventory)}}}
        self._write("patch node", self._core.patch_node, self.node_name, body)

    def _patch_pod(self, pod: PodRef, annotations: Mapping[str, str | None]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        self._write(f"patch pod {pod}", self._core.patch_namespaced_pod, pod.name, pod.namespace, body)

    def _write(self, what: str, method: Any, *args: Any) -> None:
        """A merge patch whose answer is drained, not decoded: a V1Pod model costs more than the round trip."""
        response = self._call(what, method, *args, _content_type="application/merge-patch+json", _preload_content=False)
        response.data  # noqa: B018 - reading the body returns the connection to the pool

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, _request_timeout=_TIMEOUT, **kwargs)
        except ApiException as exc:
            raise KubeError(f"{what}: HTTP {exc.status} {exc.reason}", exc.status) from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise KubeError(f"{what}: {exc}") from exc
