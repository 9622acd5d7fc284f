"""A cluster without a cluster, for the operator's tests and benchmark: real flexnpud processes, the kmock
Kubernetes API emulator, and the operator running in-process as an asyncio task.

Nothing here is used in production; kmock (a test dependency) is imported only when a cluster is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from flexnpu import names
from flexnpu.operator.core.daemons import parse_selector
from flexnpu.operator.handlers import Runtime, build_registry
from flexnpu.operator.main import kopf_settings
from flexnpu.operator.settings import OperatorSettings
from flexnpu_testsupport.waiting import free_port

CLAIMS_PATH = f"/apis/{names.CRD_GROUP}/{names.CRD_VERSION}"
START_TIMEOUT = 20.0
WAIT_SECONDS = 30.0


@dataclass
class DaemonProcess:
    """One real flexnpud (``flexnpu daemon --config FILE``) on a loopback port, standing for one node."""

    node: str
    workdir: Path
    devices: str = "sim:910B3x8"
    oversubscription: float = 1.0
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None
    _generation: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self, state_dir: Path) -> Path:
        path = self.workdir / f"{self.node}.conf"
        path.write_text(
            f"[server]\nport = {self.port}\n[logger]\nlog_level = WARNING\n"
            f"[flexnpu]\ndevices = {self.devices}\npersistent_file_dir = {state_dir}\n"
            f"oversubscription = {self.oversubscription}\n"
            f"socket_dir = {self.workdir / (self.node + '-sock')}\n",
            encoding="utf-8",
        )
        return path

    async def start(self, *, fresh_state: bool = False) -> None:
        """Start the daemon; ``fresh_state`` gives it an empty state directory (a node that lost its disk)."""
        if fresh_state:
            self._generation += 1
        state_dir = self.workdir / f"{self.node}-state-{self._generation}"
        if fresh_state and state_dir.exists():
            raise RuntimeError(f"state directory {state_dir} is not fresh")
        log = (self.workdir / f"{self.node}.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flexnpu.cli", "daemon", "--config", str(self._config(state_dir))],
            stdout=log,
            stderr=log,
        )
        log.close()
        await self._wait_healthy()

    async def _wait_healthy(self) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(int(START_TIMEOUT / 0.05)):
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"flexnpud for {self.node} exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + "/service/health") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"flexnpud for {self.node} did not answer: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.workdir / f"{self.node}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        for _ in range(100):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.05)
        process.kill()
        process.wait()

    async def registrations(self) -> dict[str, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/device/flexnpu-info") as reply:
            data = await reply.json()
        return {r["flexnpu_id"]: r for r in data["registrations"]}

    async def post(self, path: str, body: Mapping[str, Any]) -> int:
        async with aiohttp.ClientSession() as session, session.post(self.url + path, json=body) as reply:
            return reply.status


def daemon_pod(
    node: str, port: int, settings: OperatorSettings, *, namespace: str = "flexnpu-system"
) -> dict[str, Any]:
    """The node DaemonSet's pod on ``node`` as the API server would show it, its port named as the chart names it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"flexnpu-node-{node}",
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "labels": parse_selector(settings.daemon_selector),
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "flexnpud",
                    "image": "flexnpu",
                    "ports": [{"name": settings.daemon_port_name, "containerPort": port}],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def workload_pod(name: str, node: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "app"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.9"},
    }


def claim(
    name: str,
    node: str,
    *,
    npu: int = 0,
    aicore: int = 2,
    memory: int = 1024,
    namespace: str = "default",
    priority: str = "normal",
    pod: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,
        "npu": npu,
        "chip": 0,
        "aicoreAlloc": aicore,
        "memoryMiB": memory,
        "priority": priority,
        "entity": name,
    }
    if pod is not None:
        spec["podRef"] = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
    return {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": spec,
    }


def emulator_class() -> Any:
    """kmock's emulator plus what kopf relies on and a real API server does: resourceVersion bumped on every
    write (kopf's optimistic JSON-patch tests and its consistency wait need it), generation bumped on spec
    changes, and generateName, uid and creationTimestamp filled in on create. It forgets served requests."""
    import kmock

    class Emulator(kmock.KubernetesEmulator):
        _version = itertools.count(2)
        observer: Callable[[Any], None] | None = None  # sees every write before it is applied (benchmarks)

        async def _handle(self, request: Any) -> Any:
            # kmock keeps every request for assertions and matches each new one against that whole history
            # (quadratic); nothing here asserts on requests, so keep only the one being served.
            del self._requests[:-1]
            if request.resource is not None and isinstance(request.data, dict | list):
                self._stamp(request)
                if self.observer is not None:
                    self.observer(request)
            return await super()._handle(request)

        def _stamp(self, request: Any) -> None:
            version = str(next(self._version))
            if isinstance(request.data, list):
                self._check_tests(request)
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                return
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:10]}"
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            elif request.subresource is None and "spec" in request.data and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    meta["generation"] = int(self.objects[key].raw.get("metadata", {}).get("generation", 1)) + 1

        def _check_tests(self, request: Any) -> None:
            """A failed JSON-patch ``test`` is 422 Unprocessable Entity, as kopf expects, never a 500."""
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return
            current = self.objects[key].raw.get("metadata", {}).get("resourceVersion")
            for op in request.data:
                if (
                    op.get("op") == "test"
                    and op.get("path") == "/metadata/resourceVersion"
                    and op.get("value") != current
                ):
                    raise kmock.KubernetesError(
                        status=422, reason="Invalid", message=f"resourceVersion {op.get('value')} is not {current}"
                    )

    return Emulator


@contextlib.asynccontextmanager
async def kubernetes() -> AsyncIterator[Any]:
    """The kmock emulator on a loopback port, with every resource kopf and the operator use declared."""
    import kmock

    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    async with emulator_class()() as kube, kmock.Server(kube):
        kube.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
        kube.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=verbs)
        kube.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=verbs)
        kube.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition", namespaced=False, verbs=verbs
        )
        kube.resources[f"{names.CRD_GROUP}/{names.CRD_VERSION}/{names.CRD_PLURAL}"] = kmock.ResourceInfo(
            kind=names.CRD_KIND,
            singular=names.CRD_SINGULAR,
            namespaced=True,
            verbs=verbs,
            shortnames={names.CRD_SHORT_NAME},
            subresources={"status"},
        )
        yield kube


async def create(kube: Any, body: Mapping[str, Any]) -> None:
    """POST an object to the emulator as kubectl would (pods to the core API, claims to the CRD's group)."""
    meta = body["metadata"]
    plural = "pods" if body["kind"] == "Pod" else names.CRD_PLURAL
    base = "/api/v1" if body["kind"] == "Pod" else CLAIMS_PATH
    async with kube.post(f"{base}/namespaces/{meta['namespace']}/{plural}", json=body) as reply:
        if reply.status >= 300:
            raise RuntimeError(f"create {meta['name']}: {reply.status} {await reply.text()}")


async def patch_claim(kube: Any, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    url = f"{CLAIMS_PATH}/namespaces/{namespace}/{names.CRD_PLURAL}/{name}"
    headers = {"Content-Type": "application/merge-patch+json"}
    async with kube.patch(url, json=patch, headers=headers) as reply:
        if reply.status >= 300:
            raise RuntimeError(f"patch {name}: {reply.status} {await reply.text()}")


async def delete(kube: Any, kind: str, namespace: str, name: str) -> None:
    base = (
        f"/api/v1/namespaces/{namespace}/pods"
        if kind == "Pod"
        else f"{CLAIMS_PATH}/namespaces/{namespace}/{names.CRD_PLURAL}"
    )
    async with kube.delete(f"{base}/{name}") as reply:
        if reply.status >= 300:
            raise RuntimeError(f"delete {name}: {reply.status} {await reply.text()}")


def read_claim(kube: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The claim as the emulator stores it now, or None once it is gone (finalizers released)."""
    import kmock

    key = (kmock.resource(names.CRD_GROUP, names.CRD_VERSION, names.CRD_PLURAL), namespace, name)
    if key not in kube.objects or kube.objects[key].deleted:
        return None
    raw: dict[str, Any] = kube.objects[key].raw
    return raw


@contextlib.asynccontextmanager
async def running_operator(settings: OperatorSettings, api_server: str) -> AsyncIterator[Runtime]:
    """The operator as an asyncio task (standalone, all namespaces), stopped and awaited on exit."""
    runtime = Runtime(replace(settings, api_server=api_server))
    stop_flag = asyncio.Event()
    ready_flag = asyncio.Event()
    options = kopf_settings()
    options.queueing.idle_timeout = 0.5  # a stopping operator waits this long for idle workers to end
    options.queueing.exit_timeout = 0.5
    task = asyncio.create_task(
        kopf.operator(
            registry=build_registry(runtime),
            settings=options,
            standalone=True,
            clusterwide=True,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    )
    try:
        ready = asyncio.create_task(ready_flag.wait())
        await asyncio.wait({ready, task}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise RuntimeError("the operator did not start")
        yield runtime
    finally:
        stop_flag.set()
        await asyncio.wait_for(task, timeout=START_TIMEOUT)


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll ``check`` until it holds, for at most WAIT_SECONDS (no timing is asserted)."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
