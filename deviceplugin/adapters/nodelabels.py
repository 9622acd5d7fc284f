"""Writes the device plugin's node labels (flexnpu.deviceplugin.core.nodelabels) onto its Node object.

One JSON merge patch of ``metadata.labels`` through the ``kubernetes`` client, configured by the shared loader
(flexnpu.kubeclient: kubeconfig, KUBECONFIG, ~/.kube/config, in-cluster); the chart's node ClusterRole grants
``nodes`` get and patch. Only the flexnpu keys are written, so labels of other owners are untouched. A labelling
that fails is logged and retried at the next scan, never raised: labels serve selectors, and units must keep
being advertised whatever the API server says. Unchanged labels are not written again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from flexnpu.deviceplugin.kube import KubeError
from flexnpu.kubeclient import LOADER_ERRORS, load_configuration

log = logging.getLogger(__name__)

_TIMEOUT = 5.0
Labels = Mapping[str, str | None]


class NodeLabeller:
    """The flexnpu labels of one Node, written when they change."""

    def __init__(self, api_client: kubernetes.client.ApiClient, node_name: str) -> None:
        self._client = api_client
        self._core = kubernetes.client.CoreV1Api(api_client)
        self.node_name = node_name
        self.published: dict[str, str | None] | None = None

    @classmethod
    def connect(cls, node_name: str, kubeconfig: Path | None = None) -> NodeLabeller:
        try:
            return cls(kubernetes.client.ApiClient(load_configuration(kubeconfig)), node_name)
        except LOADER_ERRORS as exc:
            raise KubeError(f"cannot configure the Kubernetes client ({exc})") from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def publish(self, labels: Labels) -> bool:
        """Patch the node when ``labels`` differ from the last ones written; whether the node now has them."""
        wanted = dict(labels)
        if wanted == self.published:
            return True
        body = {"metadata": {"labels": wanted}}
        try:
            # _preload_content=False: the raw response, drained below, not a decoded V1Node.
            response: Any = self._core.patch_node(
                self.node_name,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=_TIMEOUT,
            )
            response.data  # noqa: B018 - reading the body returns the connection to the pool
        except ApiException as exc:
            log.warning("node labels not written (retried at the next scan): HTTP %s %s", exc.status, exc.reason)
            return False
        except (HTTPError, OSError, ValueError) as exc:
            log.warning("node labels not written (retried at the next scan): %s", exc)
            return False
        self.published = wanted
        log.info("node %s labelled: %s", self.node_name, ", ".join(f"{k}={v}" for k, v in sorted(wanted.items())))
        return True
