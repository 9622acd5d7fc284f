"""The box's own client of the API emulator (it creates pods, reads claims, patches pod status as kubelet).

Plain ``urllib`` with JSON bodies: the box is one more API client, like kubectl, and needs nothing else.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flexnpu import names

CLAIMS = f"/apis/{names.CRD_GROUP}/{names.CRD_VERSION}"
TIMEOUT_S = 10.0


class ApiError(Exception):
    """The API emulator answered with an error status (or not at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Api:
    """JSON requests to the API emulator at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def request(self, method: str, path: str, body: object = None, *, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")[:300]) from exc
        except OSError as exc:
            raise ApiError(0, f"API emulator unreachable ({exc})") from exc

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.request("POST", collection_path(body), body)
        return created

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        return patched

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/pods")["items"]
        return items

    def node(self, name: str) -> dict[str, Any]:
        node: dict[str, Any] = self.request("GET", f"/api/v1/nodes/{name}")
        return node

    def claims(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", f"{CLAIMS}/{names.CRD_PLURAL}")["items"]
        return items

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        self.merge_patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": {"phase": phase}})


def collection_path(body: Mapping[str, Any]) -> str:
    kind, meta = body["kind"], body.get("metadata", {})
    if kind == names.CRD_KIND:
        return f"{CLAIMS}/namespaces/{meta['namespace']}/{names.CRD_PLURAL}"
    plural = {"Pod": "pods", "Node": "nodes", "Namespace": "namespaces"}[kind]
    if kind == "Pod":
        return f"/api/v1/namespaces/{meta['namespace']}/{plural}"
    return f"/api/v1/{plural}"


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig whose current context points at the emulator (no auth), as components read it."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "box",
                "clusters": [{"name": "box", "cluster": {"server": url}}],
                "users": [{"name": "box", "user": {}}],
                "contexts": [{"name": "box", "context": {"cluster": "box", "user": "box", "namespace": "default"}}],
            }
        ),
        encoding="utf-8",
    )
    return path
