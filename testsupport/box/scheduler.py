"""The box as kube-scheduler: it places a pod by calling the extender's verbs with the pod's JSON.

kube-scheduler with an extender configured (``filterVerb``, ``prioritizeVerb``, ``bindVerb``) posts
ExtenderArgs (the pod, and the node names when ``nodeCacheCapable`` is true, else the NodeList) to filter, then
to prioritize, and delegates the Binding to the extender's bind verb. A filter that leaves no node means the pod
stays Pending; kube-scheduler retries it later, and so does the box (the extender's watch cache may not have
seen the node's inventory yet).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flexnpu_testsupport.box.cluster import http_json
from flexnpu_testsupport.box.kube import Api
from flexnpu_testsupport.box.processes import BoxError

RETRY_S = 0.2


@dataclass(frozen=True)
class Placement:
    """Where the extender put a pod, and what it said about the other nodes."""

    node: str
    scores: dict[str, int]
    failed: dict[str, str]


class SchedulerError(BoxError):
    """The extender refused to place the pod (FailedNodes or Error), or a verb failed."""


class Scheduler:
    """Calls ``<extender_url>/{filter,prioritize,bind}`` as kube-scheduler does."""

    def __init__(self, extender_url: str, api: Api, node_cache_capable: bool = True) -> None:
        self.url = extender_url
        self.api = api
        self.node_cache_capable = node_cache_capable

    def args(self, pod: dict[str, Any], nodes: Sequence[str]) -> dict[str, Any]:
        if self.node_cache_capable:
            return {"Pod": pod, "NodeNames": list(nodes), "Nodes": None}
        items = [self.api.node(name) for name in nodes]
        return {"Pod": pod, "NodeNames": None, "Nodes": {"apiVersion": "v1", "kind": "NodeList", "items": items}}

    def filter(self, pod: dict[str, Any], nodes: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        status, result = http_json(self.url + "/filter", self.args(pod, nodes))
        if status != 200 or not isinstance(result, dict) or result.get("Error"):
            raise SchedulerError(f"filter of {pod['metadata']['name']}: {status} {result}")
        fits = result.get("NodeNames")
        if fits is None:
            fits = [n["metadata"]["name"] for n in (result.get("Nodes") or {}).get("items") or []]
        failed = {**(result.get("FailedNodes") or {}), **(result.get("FailedAndUnresolvableNodes") or {})}
        return list(fits), failed

    def prioritize(self, pod: dict[str, Any], nodes: Sequence[str]) -> dict[str, int]:
        status, result = http_json(self.url + "/prioritize", self.args(pod, nodes))
        if status != 200 or not isinstance(result, list):
            raise SchedulerError(f"prioritize of {pod['metadata']['name']}: {status} {result}")
        return {entry["Host"]: int(entry["Score"]) for entry in result}

    def bind(self, pod: dict[str, Any], node: str) -> None:
        meta = pod["metadata"]
        body = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
        status, result = http_json(self.url + "/bind", body)
        if status != 200 or not isinstance(result, dict) or result.get("Error"):
            raise SchedulerError(f"bind of {meta['name']} to {node}: {status} {result}")

    def schedule(self, namespace: str, name: str, nodes: Sequence[str], timeout: float = 20.0) -> Placement:
        """Filter (retried while no node fits), prioritize, bind to the best node; the pod as the API has it."""
        deadline = time.monotonic() + timeout
        while True:
            pod = self.api.pod(namespace, name)
            fits, failed = self.filter(pod, nodes)
            if fits:
                break
            if time.monotonic() > deadline:
                raise SchedulerError(f"{name}: no node fits: {failed}")
            time.sleep(RETRY_S)
        scores = self.prioritize(pod, fits)
        best = max(fits, key=lambda n: scores.get(n, 0))
        self.bind(pod, best)
        return Placement(best, scores, failed)
