"""kmock's Kubernetes API emulator served from a thread of its own (tests and the benchmark).

The plugin's Kubernetes client is synchronous, so the emulator's event loop must not run on the caller's thread.
kmock is a test dependency: import this module only from tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import yaml

from flexnpu import names

NODE = "node-a"


class KubeEmulator:
    """kmock's Kubernetes emulator served on a localhost port from a thread of its own.

    The plugin's client is synchronous, so the emulator's event loop must not be the test's thread.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self.emulator: Any = None
        self.server: Any = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._enter(), self.loop).result(timeout=30)

    async def _enter(self) -> None:
        self.emulator = kmock.KubernetesEmulator()
        self.emulator.resources["v1/pods"] = kmock.ResourceInfo(
            kind="Pod", namespaced=True, singular="pod", verbs={"list", "get", "create", "patch", "delete"}
        )
        self.emulator.resources["v1/nodes"] = kmock.ResourceInfo(
            kind="Node", namespaced=False, singular="node", verbs={"list", "get", "create", "patch"}
        )
        await self.emulator.__aenter__()
        self.server = kmock.Server(self.emulator)
        await self.server.__aenter__()

    async def _exit(self) -> None:
        await self.server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._exit(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kmock",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "kmock", "user": {}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                }
            )
        )
        return path

    def create_node(self, name: str = NODE) -> None:
        self.request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

    def create_pod(
        self,
        name: str,
        units: int,
        *,
        annotations: dict[str, str] | None = None,
        node: str = NODE,
        namespace: str = "default",
        memory_mib: int | None = None,
        phase: str = "Pending",
        created: str = "2026-01-01T00:00:00Z",
    ) -> dict[str, Any]:
        limits = {names.RESOURCE_VNPU: str(units)}
        if memory_mib is not None:
            limits[names.RESOURCE_VNPU_MEMORY] = str(memory_mib)
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "creationTimestamp": created,
                "annotations": annotations or {},
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "app", "resources": {"limits": limits}}],
            },
            "status": {"phase": phase},
        }
        result: dict[str, Any] = self.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
        return result

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return result

    def annotations(self, kind: str, name: str) -> dict[str, str]:
        path = f"/api/v1/nodes/{name}" if kind == "node" else f"/api/v1/namespaces/default/pods/{name}"
        return dict(self.request("GET", path)["metadata"].get("annotations") or {})

    def forget_requests(self) -> None:
        """Drop kmock's log of served requests (kept for test assertions; long benchmarks slow down with it)."""

        async def clear() -> None:
            self.emulator._requests.clear()

        asyncio.run_coroutine_threadsafe(clear(), self.loop).result(timeout=10)
