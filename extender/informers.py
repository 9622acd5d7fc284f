"""Keep :class:`ClusterState` in step with the API server: list, then watch, nodes and pods; re-list on any break.

Nodes contribute their ``flexnpu.io/inventory`` annotation (decoded with the shared contract; a node without one,
or with one that does not parse, has no flexnpu cards) and their allocatable CPU and memory. Pods contribute
their ``flexnpu.io/assigned`` annotation, node, phase and CPU and memory requests. VNpuClaims contribute what
each holds on its card (counted while its pod holds nothing: a pod gone before its claim was deregistered). The
loops only translate API events into state calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flexnpu.annotations import Inventory, decode_inventory
from flexnpu.errors import ValidationError
from flexnpu.extender.kube import KubeApi, KubeApiError
from flexnpu.extender.pods import pod_facts, pod_key
from flexnpu.extender.state import ClusterState, HeldClaim, NodeRecord
from flexnpu.names import ANNOTATION_INVENTORY, CRD_GROUP, CRD_PLURAL, CRD_VERSION, LABEL_CLAIM_POD_UID
from flexnpu.quantity import cpu_milli, memory_mib

log = logging.getLogger(__name__)

NODES_PATH = "/api/v1/nodes"
PODS_PATH = "/api/v1/pods"
CLAIMS_PATH = f"/apis/{CRD_GROUP}/{CRD_VERSION}/{CRD_PLURAL}"
CLAIMS_UNSERVED_RETRY_S = 30.0  # no CRD or no RBAC rule: serve without the claims, ask again this much later


def held_claim(claim: Mapping[str, Any]) -> HeldClaim | None:
    """What a VNpuClaim holds on its card; None (logged) for one that names no node, card or size we can read."""
    meta = claim.get("metadata")
    spec = claim.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        return None
    uid, labels = meta.get("uid"), meta.get("labels")
    pod_uid = labels.get(LABEL_CLAIM_POD_UID) if isinstance(labels, Mapping) else None
    node, npu, units, memory = (spec.get(k) for k in ("nodeName", "npu", "aicoreAlloc", "memoryMiB"))
    numbers = (npu, units, 0 if memory is None else memory)
    if not isinstance(uid, str) or not uid or not isinstance(node, str) or not node:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 for n in numbers):
        log.warning(
            "claim %s/%s: spec npu %r, aicoreAlloc %r, memoryMiB %r not counted (not sizes)",
            meta.get("namespace"),
            meta.get("name"),
            npu,
            units,
            memory,
        )
        return None
    assert isinstance(npu, int) and isinstance(units, int)
    namespace = meta.get("namespace")
    return HeldClaim(
        uid,
        pod_uid if isinstance(pod_uid, str) else "",
        node,
        npu,
        units,
        int(memory or 0),
        namespace=namespace if isinstance(namespace, str) else "",
    )


def node_inventory(node: Mapping[str, Any]) -> Inventory | None:
    """The node's decoded inventory, or None (logged) when it has none or it does not parse."""
    meta = node.get("metadata") or {}
    text = (meta.get("annotations") or {}).get(ANNOTATION_INVENTORY)
    if not text:
        return None
    try:
        return decode_inventory(text)
    except ValidationError as exc:
        log.warning("node %s: ignoring its %s: %s", meta.get("name"), ANNOTATION_INVENTORY, exc)
        return None


def node_allocatable(node: Mapping[str, Any]) -> tuple[int, int]:
    """The node's allocatable (CPU millicores, memory MiB); 0 for one that is absent or unreadable (not tracked)."""
    status = node.get("status")
    allocatable = status.get("allocatable") if isinstance(status, Mapping) else None
    if not isinstance(allocatable, Mapping):
        return 0, 0
    return _capacity(allocatable, "cpu", cpu_milli), _capacity(allocatable, "memory", memory_mib)


def node_record(node: Mapping[str, Any]) -> NodeRecord | None:
    """What the state keeps of a watched node; None when it has no readable inventory."""
    inventory = node_inventory(node)
    if inventory is None:
        return None
    cpu, memory = node_allocatable(node)
    return NodeRecord(inventory, cpu, memory)


def _capacity(allocatable: Mapping[str, Any], resource: str, parse: Callable[[object, str], int]) -> int:
    raw = allocatable.get(resource)
    if raw is None:
        return 0
    try:
        return parse(raw, f"status.allocatable.{resource}")
    except ValidationError as exc:
        log.warning("ignoring a node's %s", exc)
        return 0


class Informers:
    """Runs the node and pod watches into ``state`` until cancelled; ``synced`` is set after both first lists."""

    def __init__(self, api: KubeApi, state: ClusterState, *, retry_s: float = 1.0) -> None:
        self.api = api
        self.state = state
        self.retry_s = retry_s
        self.synced = asyncio.Event()
        self._nodes_synced = asyncio.Event()
        self._pods_synced = asyncio.Event()
        self._claims_synced = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(NODES_PATH, self._relist_nodes, self._node_event, self._nodes_synced))
            group.create_task(self._loop(PODS_PATH, self._relist_pods, self._pod_event, self._pods_synced))
            group.create_task(self._loop(CLAIMS_PATH, self._relist_claims, self._claim_event, self._claims_synced))
            group.create_task(self._mark_synced())

    async def _mark_synced(self) -> None:
        await self._nodes_synced.wait()
        await self._pods_synced.wait()
        await self._claims_synced.wait()
        self.synced.set()

    async def _loop(
        self,
        path: str,
        relist: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        synced: asyncio.Event,
    ) -> None:
        while True:
            try:
                items, version = await self.api.list(path)
                relist(items)
                synced.set()
                await self._follow(path, version, on_event)
            except KubeApiError as exc:
                if path == CLAIMS_PATH and exc.status in (403, 404):
                    # No CRD or no RBAC rule for it: placement goes on from the pods alone (not held back).
                    log.warning(
                        "watch %s: %s; placing without the claims, asking again in %.0fs",
                        path,
                        exc,
                        CLAIMS_UNSERVED_RETRY_S,
                    )
                    synced.set()
                    await asyncio.sleep(CLAIMS_UNSERVED_RETRY_S)
                    continue
                log.warning("watch %s: %s; listing again in %.1fs", path, exc, self.retry_s)
            await asyncio.sleep(self.retry_s)

    async def _follow(self, path: str, version: str, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        async for kind, obj in self.api.watch(path, version):
            on_event(kind, obj)

    def _relist_nodes(self, items: list[dict[str, Any]]) -> None:
        records = {}
        for node in items:
            record = node_record(node)
            if record is not None:
                records[str(node["metadata"]["name"])] = record
        self.state.replace_nodes(records)

    def _relist_pods(self, items: list[dict[str, Any]]) -> None:
        self.state.replace_pods(pod_facts(pod) for pod in items)

    def _relist_claims(self, items: list[dict[str, Any]]) -> None:
        self.state.replace_claims(c for c in map(held_claim, items) if c is not None)

    def _claim_event(self, kind: str, claim: dict[str, Any]) -> None:
        uid = (claim.get("metadata") or {}).get("uid")
        if kind == "BOOKMARK" or not isinstance(uid, str):
            return
        held = None if kind == "DELETED" else held_claim(claim)
        if held is None:
            self.state.forget_claim(uid)
        else:
            self.state.observe_claim(held)

    def _node_event(self, kind: str, node: dict[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name") or "")
        if not name or kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.state.remove_node(name)
        else:
            record = node_record(node)
            if record is None:
                self.state.remove_node(name)
            else:
                self.state.set_node(name, record.inventory, record.cpu_milli, record.memory_mib)

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.state.forget_pod(pod_key(pod).uid)
        else:
            self.state.observe_pod(pod_facts(pod))
