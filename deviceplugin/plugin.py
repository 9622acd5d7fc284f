"""The vNPU plugin: the node's cards, their units, and the placement behind each kubelet call.

It sits between the gRPC adapter (flexnpu.deviceplugin.server, which only translates) and the pure core. It
owns the current card snapshot (rescanned by the discovery backend), tells ListAndWatch when it changes,
publishes it as the node's inventory annotation, and for each Allocate finds the pod through the annotation
handshake, decides its cards with the core, and records the outcome on the pod. GetPreferredAllocation finds the
pod the same way; the Allocate that kubelet sends right after it with the offered IDs takes that pod without
listing the node's pods a second time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.cards import Card
from flexnpu.deviceplugin.core.allocation import (
    AllocationError,
    PendingPod,
    assignment_on_node,
    best_fit_placement,
    check_preferred_request,
    free_units,
    match_pod,
    placement_from_ids,
    preferred_ids,
)
from flexnpu.deviceplugin.core.devices import UnitDevice, unit_devices
from flexnpu.deviceplugin.core.pods import NodePod, pending_pods, units_in_use
from flexnpu.deviceplugin.core.response import ContainerAllocation, NodeLayout, Workload, container_allocation
from flexnpu.deviceplugin.discovery import DiscoveryError, Scanner
from flexnpu.deviceplugin.kube import KubeApi, KubeError
from flexnpu.deviceplugin.metrics import Metrics
from flexnpu.errors import ValidationError
from flexnpu.priority import DEFAULT_PRIORITY
from flexnpu.units import UnitsConfig, parse_vnpu_request

log = logging.getLogger(__name__)

# How long the pod GetPreferredAllocation matched stands for the Allocate that follows with the IDs it offered
# (kubelet calls the two back to back for one container; the Allocate then skips listing the node's pods again).
PREFERRED_TTL_S = 5.0


@dataclass(frozen=True)
class Allocation:
    """One container's Allocate outcome: the pod it was for (if found), its cards, and what to inject."""

    pod: PendingPod | None
    cards: tuple[CardAssignment, ...]
    placement: str
    response: ContainerAllocation


class VnpuPlugin:
    def __init__(self, scanner: Scanner, units: UnitsConfig, layout: NodeLayout, kube: KubeApi | None = None,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.scanner = scanner
        self.units = units
        self.layout = layout
        self.kube = kube
        self.metrics = metrics or Metrics()
        self._cards: tuple[Card, ...] = ()
        self._version = 0
        self._changed = threading.Condition()
        self._allocate_lock = threading.Lock()
        self._allocated_uids: set[str] = set()
        self._offered: tuple[frozenset[str], PendingPod, float] | None = None  # the last preferred answer's pod
        self._clock = clock
        self._stopped = False

    # -- cards and units ---------------------------------------------------------------------------------

    @property
    def cards(self) -> tuple[Card, ...]:
        return self._cards

    @property
    def inventory(self) -> Inventory:
        return Inventory(cards=self._cards, units=self.units)

    def rescan(self) -> bool:
        """Scan once; on a change, wake ListAndWatch and publish the inventory. DiscoveryError propagates."""
        cards = tuple(sorted(self.scanner.scan(), key=lambda c: (c.index, c.chip)))
        with self._changed:
            if cards == self._cards:
                return False
            self._cards = cards
            self._version += 1
            self._changed.notify_all()
        log.info("cards: %s", ", ".join(f"npu {c.index} {c.model} {c.uuid} {c.health.value}" for c in cards))
        self.metrics.observe_cards(cards, self.units.advertised_per_card)
        self.publish_inventory()
        return True

    def publish_inventory(self) -> None:
        if self.kube is None:
            return
        try:
            self.kube.publish_inventory(self.inventory)
        except KubeError as exc:
            log.warning("node inventory not published (retried at the next change or scan): %s", exc)

    def devices(self) -> tuple[int, list[UnitDevice]]:
        """(version, units) of the current snapshot."""
        with self._changed:
            return self._version, unit_devices(self._cards, self.units)

    def wait_for_change(self, version: int, timeout: float) -> int:
        """Block until the snapshot is newer than ``version`` (or timeout, or stop); return the current version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._stopped, timeout=timeout)
            return self._version

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def refresh_usage(self) -> None:
        """Units held per card, from the pods whose handshake finished (metrics only)."""
        self.metrics.observe_usage(units_in_use(self._node_pods()), self._cards, self.units.advertised_per_card)

    # -- kubelet calls -------------------------------------------------------------------------------------

    def preferred(self, available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
        """GetPreferredAllocation for one container: units of the assigned (or best-fit) card.

        A ValidationError names the field when the request itself is malformed (its size, say).
        """
        check_preferred_request(available, must_include, size)
        cards = self._cards
        pod = match_pod(self._pending(self._node_pods()), size)
        try:
            if pod is not None and pod.placed_by_extender:
                placement = pod.assignment
            else:
                request = parse_vnpu_request(size, self.units, None if pod is None else pod.memory_mib)
                placement = best_fit_placement(cards, free_units(available, cards), request, self.units)
        except (AllocationError, ValidationError) as exc:
            log.warning("preferred allocation of %d unit(s): %s; kubelet chooses", size, exc)
            placement = ()
        ids = preferred_ids(placement, available, must_include, size, cards)
        self._offered = None if pod is None else (frozenset(ids), pod, self._clock())
        return ids

    def allocate(self, ids: Sequence[str]) -> Allocation:
        """Allocate for one container; AllocationError (recorded on the pod when it was found) refuses it."""
        with self._allocate_lock:
            pod = self._offered_pod(ids)
            if pod is None:
                pod = match_pod(self._pending(self._node_pods()), len(ids))
            try:
                allocation = self._decide(pod, ids)
            except (AllocationError, ValidationError) as exc:
                self.metrics.failures.inc()
                if pod is not None:
                    self._record_failure(pod, str(exc))
                raise AllocationError(f"{'pod ' + str(pod.ref) if pod else 'no pod'}: {exc}") from exc
            if pod is not None:
                self._record(pod, allocation.cards)
            self.metrics.allocations.labels(placement=allocation.placement).inc()
            return allocation

    def _offered_pod(self, ids: Sequence[str]) -> PendingPod | None:
        """The pod GetPreferredAllocation just matched, when kubelet allocates exactly the IDs offered for it."""
        offered, self._offered = self._offered, None
        if offered is None:
            return None
        offered_ids, pod, at = offered
        if frozenset(ids) != offered_ids or self._clock() - at > PREFERRED_TTL_S or pod.ref.uid in self._allocated_uids:
            return None
        return pod

    def _decide(self, pod: PendingPod | None, ids: Sequence[str]) -> Allocation:
        cards = self._cards
        if pod is not None and pod.placed_by_extender:
            problems = assignment_on_node(pod.assignment, cards)
            if problems:
                raise AllocationError("; ".join(problems))
            chosen, placement = pod.assignment, "extender"
        else:
            request = parse_vnpu_request(len(ids), self.units, None if pod is None else pod.memory_mib)
            chosen, placement = placement_from_ids(cards, ids, request, self.units), "best-fit"
            if pod is None:
                placement = "device-ids"
                log.warning("Allocate of %d unit(s): no pod of this node matches; answering from the IDs", len(ids))
        workload = Workload(priority=pod.priority, claim=str(pod.ref)) if pod else Workload(DEFAULT_PRIORITY, "")
        return Allocation(pod=pod, cards=tuple(chosen), placement=placement,
                          response=container_allocation(chosen, workload, self.layout))

    def _node_pods(self) -> list[NodePod]:
        if self.kube is None:
            return []
        try:
            return self.kube.node_pods()
        except KubeError as exc:
            log.warning("pods of this node not readable, placing from device IDs: %s", exc)
            return []

    def _pending(self, node_pods: list[NodePod]) -> list[PendingPod]:
        for node_pod in node_pods:
            if node_pod.problem:
                log.warning("pod %s: %s", node_pod.pod.ref, node_pod.problem)
        if self.kube is not None and node_pods:
            self._allocated_uids &= {p.pod.ref.uid for p in node_pods}
        return [p for p in pending_pods(node_pods) if p.ref.uid not in self._allocated_uids]

    def _record(self, pod: PendingPod, cards: Sequence[CardAssignment]) -> None:
        # Remembered locally too: a second Allocate may come before the API shows the patch.
        self._allocated_uids.add(pod.ref.uid)
        try:
            assert self.kube is not None
            self.kube.record_allocation(pod.ref, cards)
        except KubeError as exc:
            log.warning("pod %s allocated on %s but not recorded: %s", pod.ref, [c.uuid for c in cards], exc)

    def _record_failure(self, pod: PendingPod, reason: str) -> None:
        try:
            assert self.kube is not None
            self.kube.record_failure(pod.ref, reason)
        except KubeError as exc:
            log.warning("pod %s failed (%s), not recorded: %s", pod.ref, reason, exc)


__all__ = ["Allocation", "DiscoveryError", "VnpuPlugin"]
