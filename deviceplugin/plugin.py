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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from flexnpu import names
from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.cards import Card
from flexnpu.daemonclient import DaemonError, DaemonRefused
from flexnpu.deviceplugin.claimcache import ClaimCache
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
from flexnpu.deviceplugin.core.containers import PodClaim, claims_for_cards, container_cards
from flexnpu.deviceplugin.core.devices import UnitDevice, unit_devices
from flexnpu.deviceplugin.core.handshake import allocation_annotations, failure_annotations
from flexnpu.deviceplugin.core.pods import NodePod, pending_pods, units_in_use
from flexnpu.deviceplugin.core.response import ContainerAllocation, NodeLayout, Workload, container_allocation
from flexnpu.deviceplugin.handshake import HandshakeWriter
from flexnpu.deviceplugin.kube import KubeApi, KubeError
from flexnpu.deviceplugin.metrics import Metrics
from flexnpu.discovery import DiscoveryError, Scanner
from flexnpu.errors import ConfigError, ValidationError
from flexnpu.priority import DEFAULT_PRIORITY
from flexnpu.registration import Registration
from flexnpu.units import UnitsConfig, parse_vnpu_request

log = logging.getLogger(__name__)

# How long the pod GetPreferredAllocation matched stands for the Allocate that follows with the IDs it offered
# (kubelet calls the two back to back for one container; the Allocate then skips listing the node's pods again).
PREFERRED_TTL_S = 5.0
CLAIM_POLL_S = 0.05  # between lists of a pod's claims when the claim cache cannot answer
SLOT_POLL_S = 0.002  # between looks for flexnpud's slot file (a stat)
CLAIMS_RETRY_S = 30.0  # after the API said it serves no claims to us (404, 403), ask again this much later


class Registrar(Protocol):
    """This node's flexnpud (flexnpu.daemonclient.DaemonClient): registering an id it holds with the same body
    changes nothing, so the operator's own register of the claim afterwards finds it done."""

    def register(self, registration: Registration) -> None: ...


@dataclass(frozen=True)
class Allocation:
    """One container's Allocate outcome: the pod it was for (if found), its cards, and what to inject."""

    pod: PendingPod | None
    container: str
    pod_cards: tuple[CardAssignment, ...]
    """The pod's cards (the extender's assignment, or the best fit chosen at its first container)."""
    cards: tuple[CardAssignment, ...]
    """This container's part of them."""
    placement: str
    response: ContainerAllocation


class VnpuPlugin:
    def __init__(
        self,
        scanner: Scanner,
        units: UnitsConfig,
        layout: NodeLayout,
        kube: KubeApi | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        claim_wait: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        writer: HandshakeWriter | None = None,
        claims: ClaimCache | None = None,
        daemon: Registrar | None = None,
    ) -> None:
        """``writer`` patches the handshake onto pods off the Allocate path (default: one without a journal,
        started here); ``claims`` answers a pod's claims from a watch (default: none, each Allocate lists them);
        ``daemon`` registers a claim whose slot flexnpud has not made yet (default: none, the operator's register
        is awaited)."""
        self.scanner = scanner
        self.units = units
        self.layout = layout
        self.kube = kube
        self.metrics = metrics or Metrics()
        self._cards: tuple[Card, ...] = ()
        self._version = 0
        self._changed = threading.Condition()
        self._allocate_lock = threading.Lock()
        self._served: dict[str, frozenset[str]] = {}  # pod uid -> containers allocated by this process
        self._pod_cards: dict[str, tuple[CardAssignment, ...]] = {}  # pod uid -> the cards its first container fixed
        self.claim_wait = claim_wait
        self._claims_unserved_until = float("-inf")
        self._sleep = sleep
        self._offered: tuple[frozenset[str], PendingPod, float] | None = None  # the last preferred answer's pod
        self._clock = clock
        self._stopped = False
        self.claims = claims
        self.daemon = daemon
        self.writer = writer
        if writer is None and kube is not None:
            self.writer = HandshakeWriter(kube, on_change=self.metrics.handshake_pending.set, clock=clock)
            self.writer.start()

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
        """GetPreferredAllocation for one container: units of its part of the assigned (or best-fit) card.

        A ValidationError names the field when the request itself is malformed (its size, say).
        """
        check_preferred_request(available, must_include, size)
        cards = self._cards
        pod = match_pod(self._pending(self._node_pods(pending_only=True)), size)
        try:
            if pod is not None and pod.placed_by_extender:
                placement = self._container_cards(pod, pod.assignment)
            elif pod is not None:  # the first container of a pod nobody placed: a card for the whole pod
                request = parse_vnpu_request(pod.units, self.units, pod.memory_mib)
                placement = self._container_cards(
                    pod, best_fit_placement(cards, free_units(available, cards), request, self.units)
                )
            else:
                request = parse_vnpu_request(size, self.units, None)
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
            matched = "the pod GetPreferredAllocation offered"
            if pod is None:
                pending = self._pending(self._node_pods(pending_only=True))
                pod, matched = match_pod(pending, len(ids)), f"matched among {len(pending)} pending pod(s)"
            container = None if pod is None else pod.next_container
            what = "no pod" if pod is None or container is None else f"pod {pod.ref} container {container.name}"
            try:
                allocation = self._decide(pod, ids)
            except (AllocationError, ValidationError) as exc:
                self.metrics.failures.inc()
                if pod is not None:
                    self._record_failure(pod, str(exc))
                raise AllocationError(f"{what}: {exc}") from exc
            if pod is not None:
                self._record(pod, allocation)
                env = allocation.response.env()
                log.info(
                    "Allocate of %d unit(s): %s (%s), cards %s, FLEXNPU_ID=%s FLEXNPU_PRIORITY=%s FLEXNPU_CLAIM=%s",
                    len(ids),
                    what,
                    matched,
                    ",".join(f"{c.index}:{c.units}u/{c.memory_mib}MiB" for c in allocation.cards),
                    env.get(names.ENV_ID, "-"),
                    env.get(names.ENV_PRIORITY, "-"),
                    env.get(names.ENV_CLAIM, "-"),
                )
            self.metrics.allocations.labels(placement=allocation.placement).inc()
            return allocation

    def _offered_pod(self, ids: Sequence[str]) -> PendingPod | None:
        """The pod GetPreferredAllocation just matched, when kubelet allocates exactly the IDs offered for it."""
        offered, self._offered = self._offered, None
        if offered is None:
            return None
        offered_ids, pod, at = offered
        if frozenset(ids) != offered_ids or self._clock() - at > PREFERRED_TTL_S:
            return None
        served = self._served.get(pod.ref.uid, frozenset())
        container = pod.next_container
        if container is None or container.name in served:
            return None
        return replace(pod, served=pod.served | served)

    def _decide(self, pod: PendingPod | None, ids: Sequence[str]) -> Allocation:
        cards = self._cards
        container = None if pod is None else pod.next_container
        if pod is not None and container is not None and pod.placed_by_extender:
            problems = assignment_on_node(pod.assignment, cards)
            if problems:
                raise AllocationError("; ".join(problems))
            pod_cards, placement = pod.assignment, "extender"
        elif pod is not None and container is not None:
            request = parse_vnpu_request(pod.units, self.units, pod.memory_mib)
            pod_cards, placement = placement_from_ids(cards, ids, request, self.units), "best-fit"
        else:
            request = parse_vnpu_request(len(ids), self.units, None)
            chosen = placement_from_ids(cards, ids, request, self.units)
            log.warning("Allocate of %d unit(s): no pod of this node matches; answering from the IDs", len(ids))
            return Allocation(
                pod=None,
                container="",
                pod_cards=tuple(chosen),
                cards=tuple(chosen),
                placement="device-ids",
                response=container_allocation(chosen, Workload(DEFAULT_PRIORITY, ""), self.layout),
            )
        chosen = self._container_cards(pod, pod_cards)
        claims = self._container_claims(pod, chosen)
        ids = tuple(c.flexnpu_id for c in claims)
        workload = Workload(priority=pod.priority, claim=str(pod.ref), flexnpu_ids=ids)
        return Allocation(
            pod=pod,
            container=container.name,
            pod_cards=tuple(pod_cards),
            cards=chosen,
            placement=placement,
            response=container_allocation(chosen, workload, self._layout_for(pod, claims)),
        )

    def _layout_for(self, pod: PendingPod, claims: Sequence[PodClaim]) -> NodeLayout:
        """The layout with the registration's slot mounted when flexnpud has made it: a container runtime refuses a
        missing mount source, and libflexnpu cannot use a slot it can only read. A slot not there yet is made by
        registering the claim with flexnpud (``daemon``), else awaited up to ``claim_wait`` (the operator registers
        every claim too). Without it the container gets the read-only shim directory alone (and runs ungated)."""
        if not (self.layout.slot_mount and claims):
            return replace(self.layout, slot_mount=False)
        slot = self._slot(claims[0])
        if slot.is_file():
            self.metrics.slots.labels(outcome="ready").inc()
            return self.layout
        if self.daemon is not None and not self._register(pod, claims):
            self.metrics.slots.labels(outcome="refused").inc()
            return replace(self.layout, slot_mount=False)
        if slot.is_file():
            self.metrics.slots.labels(outcome="registered").inc()
            return self.layout
        deadline = self._clock() + self.claim_wait
        while not slot.is_file():
            if self._clock() >= deadline:
                self.metrics.slots.labels(outcome="missing").inc()
                log.warning("pod %s: flexnpud has no slot %s yet: the container runs ungated", pod.ref, slot)
                return replace(self.layout, slot_mount=False)
            self._sleep(SLOT_POLL_S)
        self.metrics.slots.labels(outcome="awaited").inc()
        return self.layout

    def _slot(self, claim: PodClaim) -> Path:
        return Path(self.layout.shim_socket_dir) / names.slot_file(claim.flexnpu_id)

    def _register(self, pod: PendingPod, claims: Sequence[PodClaim]) -> bool:
        """Register each claim with flexnpud as the operator would; False when flexnpud refused one for its content
        (quota, memory, a bad field: the operator reports that on the claim, so there is nothing to wait for). A
        daemon that cannot be reached, or does not take our token, leaves the operator's register to await."""
        assert self.daemon is not None
        for claim in claims:
            if claim.registration is None or self._slot(claim).is_file():
                continue  # a spec that does not parse or is for another node (the operator says why), or held
            try:
                self.daemon.register(claim.registration)
            except (DaemonError, ConfigError) as exc:
                if isinstance(exc, DaemonRefused) and exc.status in (400, 409):
                    log.warning(
                        "pod %s: flexnpud refused claim %s: %s; the container runs ungated", pod.ref, claim.name, exc
                    )
                    return False
                log.warning(
                    "pod %s: registering claim %s with flexnpud: %s; awaiting the operator", pod.ref, claim.name, exc
                )
        return True

    @staticmethod
    def _container_cards(pod: PendingPod, pod_cards: Sequence[CardAssignment]) -> tuple[CardAssignment, ...]:
        container = pod.next_container
        if container is None:
            return tuple(pod_cards)
        return container_cards(pod_cards, pod.containers, container)

    def _container_claims(self, pod: PendingPod, cards: Sequence[CardAssignment]) -> tuple[PodClaim, ...]:
        """The claim of each of the container's cards (the ids the operator registers them under); for a pod the
        extender placed (it creates the claims right after the Binding) the claims are awaited up to ``claim_wait``
        seconds."""
        if self.kube is None or not self.layout.inject_shim or self._clock() < self._claims_unserved_until:
            return ()
        deadline = self._clock() + (self.claim_wait if pod.bind_time is not None else 0.0)
        while True:
            cached = None if self.claims is None else self.claims.claims_of(pod.ref)
            self.metrics.claim_reads.labels(source="api" if cached is None else "cache").inc()
            try:
                found = claims_for_cards(cached if cached is not None else self._listed_claims(pod), cards)
            except KubeError as exc:
                if exc.status in (403, 404):  # no CRD, or no RBAC rule: not worth a call per container
                    self._claims_unserved_until = self._clock() + CLAIMS_RETRY_S
                log.warning("claims of pod %s not readable, FLEXNPU_ID not set: %s", pod.ref, exc)
                return ()
            left = deadline - self._clock()
            if found or left <= 0:
                if not found:
                    log.warning("pod %s: no claim for its card(s) yet, FLEXNPU_ID not set", pod.ref)
                return found
            if cached is not None and self.claims is not None:
                self.claims.wait(min(left, CLAIM_POLL_S))  # woken as soon as the watch brings a claim
            else:
                self._sleep(CLAIM_POLL_S)

    def _listed_claims(self, pod: PendingPod) -> list[PodClaim]:
        assert self.kube is not None
        return self.kube.pod_claims(pod.ref)

    def _node_pods(self, pending_only: bool = False) -> list[NodePod]:
        if self.kube is None:
            return []
        try:
            return self.kube.node_pods(pending_only)
        except KubeError as exc:
            log.warning("pods of this node not readable, placing from device IDs: %s", exc)
            return []

    def _pending(self, node_pods: list[NodePod]) -> list[PendingPod]:
        """The pods waiting for an Allocate, with the containers served so far (annotation and memory joined)."""
        for node_pod in node_pods:
            if node_pod.problem:
                log.warning("pod %s: %s", node_pod.pod.ref, node_pod.problem)
        if self.kube is not None and node_pods:
            present = {p.pod.ref.uid for p in node_pods}
            self._served = {uid: names for uid, names in self._served.items() if uid in present}
            self._pod_cards = {uid: cards for uid, cards in self._pod_cards.items() if uid in present}
        out = []
        for pod in pending_pods(node_pods):
            served = pod.served | self._served.get(pod.ref.uid, frozenset())
            if all(c.name in served for c in pod.containers):
                continue  # served in full: the API does not show it yet
            out.append(replace(pod, served=served, assignment=pod.assignment or self._pod_cards.get(pod.ref.uid, ())))
        return out

    def _record(self, pod: PendingPod, allocation: Allocation) -> None:
        """Progress on the pod: the containers served, the pod's cards, and ``allocated`` after the last one."""
        served = pod.served | {allocation.container}
        # Remembered locally too: the next Allocate may come before the API shows the patch.
        self._served[pod.ref.uid] = served
        self._pod_cards[pod.ref.uid] = allocation.pod_cards
        order = [c.name for c in pod.containers if c.name in served]
        done = all(c.name in served for c in pod.containers)
        assert self.writer is not None
        self.writer.submit(pod.ref, allocation_annotations(allocation.pod_cards, order, done=done))

    def _record_failure(self, pod: PendingPod, reason: str) -> None:
        assert self.writer is not None
        self.writer.submit(pod.ref, failure_annotations(reason))


__all__ = ["Allocation", "DiscoveryError", "VnpuPlugin"]
