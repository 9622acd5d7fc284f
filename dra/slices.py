"""The DRA mode's ResourceSlice adapter: publish this node's cards as resource.k8s.io/v1 slices.

What to publish and what to write is decided by :mod:`flexnpu.dra.core.slices`; this module only reads the
node and its slices and applies the plan, as raw JSON (no client models). Each slice is owned by the Node
(``ownerReferences``, not a controller), so the garbage collector removes it with the node. An update is a JSON
merge patch of the whole wanted body: the device list is replaced as a whole, and the ``resourceVersion`` it
carries makes a concurrent write fail with 409 instead of being overwritten. Every client error leaves as
:class:`SliceError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from flexnpu.cards import Card
from flexnpu.dra.core.slices import DRIVER, Json, SlicePlan, plan, wanted_slices
from flexnpu.errors import FlexnpuError
from flexnpu.units import UnitsConfig

log = logging.getLogger(__name__)
_TIMEOUT = 5.0


class SliceError(FlexnpuError):
    """The API could not be reached or refused a slice request (``status``: its HTTP status, if it answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SlicePublisher:
    """Keeps the slices of driver ``driver`` on node ``node_name`` equal to the node's healthy cards.

    Call :meth:`publish` at start and on every inventory or health change; it writes only when something changed.
    A conflict (someone else wrote the slice meanwhile) raises SliceError with status 409: call again.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        node_name: str,
        driver: str = DRIVER,
        units: UnitsConfig | None = None,
    ) -> None:
        self._resource = kubernetes.client.ResourceV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self.node_name = node_name
        self.driver = driver
        self.units = units or UnitsConfig()

    def publish(self, cards: Sequence[Card]) -> SlicePlan:
        """Bring the API to these cards; the plan that was applied (empty when nothing changed).

        An inventory that cannot be published (no card, duplicate index or uuid, no HBM) raises ValidationError
        before anything is written.
        """
        wanted = wanted_slices(cards, self.node_name, self.units, driver=self.driver)
        todo = plan(self.current(), wanted)
        if todo.empty:
            return todo
        owner = self._node_owner()
        for body in todo.create:
            body["metadata"]["ownerReferences"] = [owner]
            self._json(f"create slice {body['metadata']['name']}", self._resource.create_resource_slice, body)
        for body in todo.update:
            body["metadata"]["ownerReferences"] = [owner]
            name = body["metadata"]["name"]
            self._json(
                f"update slice {name}",
                self._resource.patch_resource_slice,
                name,
                body,
                _content_type="application/merge-patch+json",
            )
        for name in todo.delete:
            self._json(f"delete slice {name}", self._resource.delete_resource_slice, name)
        log.info(
            "slices of %s: %d created, %d updated, %d deleted (pool generation %s)",
            self.node_name,
            len(todo.create),
            len(todo.update),
            len(todo.delete),
            (todo.create + todo.update)[0]["spec"]["pool"]["generation"] if todo.create or todo.update else "-",
        )
        return todo

    def current(self) -> list[Json]:
        """This driver's slices on this node (selected on the server, and again here in case it ignored that)."""
        selector = f"spec.nodeName={self.node_name},spec.driver={self.driver}"
        items = self._json("list slices", self._resource.list_resource_slice, field_selector=selector).get("items")
        if not isinstance(items, list):
            raise SliceError("list slices: the answer has no items list")
        return [s for s in items if isinstance(s, dict) and self._mine(s)]

    def _mine(self, body: Json) -> bool:
        spec = body.get("spec")
        return isinstance(spec, dict) and spec.get("nodeName") == self.node_name and spec.get("driver") == self.driver

    def _node_owner(self) -> Json:
        node = self._json(f"read node {self.node_name}", self._core.read_node, self.node_name)
        uid = (node.get("metadata") or {}).get("uid")
        if not isinstance(uid, str) or not uid:
            raise SliceError(f"node {self.node_name} has no metadata.uid to own its slices")
        return {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": uid}

    def _json(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Json:
        response = self._call(what, method, *args, **kwargs)
        try:
            body = json.loads(response.data)
        except (ValueError, TypeError) as exc:
            raise SliceError(f"{what}: the answer is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise SliceError(f"{what}: the answer is not a JSON object")
        return body

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            response = method(*args, _request_timeout=_TIMEOUT, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise SliceError(f"{what}: HTTP {exc.status} {exc.reason}", exc.status) from exc
        except (HTTPError, OSError) as exc:
            raise SliceError(f"{what}: {exc}") from exc
        return response
