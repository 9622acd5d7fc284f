"""The extender's four verbs over typed payloads: filter, prioritize, bind and preempt.

The HTTP adapter decodes a request into a payload of :mod:`flexnpu.extender.wire` and calls one method here; this
module asks the placement core (through :class:`PlacementIndex`) and the preemption decision, keeps the state's
reservations, and gathers the bind's writes. Pods that ask for no flexnpu resource pass through untouched.

``prioritize`` lists only the nodes it scores above 0: kube-scheduler adds each listed host's score and nothing
for a host it does not list, so leaving out the zeros changes no decision and saves most of the answer on a large
cluster.

Until the watches' first lists are in (``synced``), the state is not the cluster: a filter would pass nodes whose
cards are taken and a bind could double-book them. :meth:`ExtenderService.not_synced` says so, and the HTTP adapter
answers every verb with an error until then.

Every refusal a user could wonder about becomes a Kubernetes Event on the pod (sent in the background, so the
scheduler never waits for it, and at most once a minute per pod and message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from flexnpu.annotations import CardAssignment
from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.extender import wire, writes
from flexnpu.extender.core.model import CPU_ONLY, PodDemand
from flexnpu.extender.core.placement import MAX_SCORE, PlacementError, Refusal, choose
from flexnpu.extender.index import PlacementIndex
from flexnpu.extender.informers import node_record
from flexnpu.extender.pods import (
    Interest,
    PodKey,
    first_allocation_units,
    interest,
    pod_demand,
    pod_key,
    pod_requests,
)
from flexnpu.extender.preemption import Occupant, victims_for
from flexnpu.extender.state import ClusterState, Holding, ReservationConflict
from flexnpu.names import ANNOTATION_BIND_REASON, ANNOTATION_INVENTORY
from flexnpu.units import UnitsConfig

log = logging.getLogger(__name__)

EVENT_UNSCHEDULABLE: Final = "FlexnpuUnschedulable"
EVENT_INVALID: Final = "FlexnpuInvalidRequest"
EVENT_BIND_REFUSED: Final = "FlexnpuBindRefused"
EVENT_BIND_FAILED: Final = "FlexnpuBindFailed"
EVENT_CLAIM_FAILED: Final = "FlexnpuClaimFailed"
EVENT_BIND_DEFERRED: Final = "FlexnpuBindDeferred"
BIND_POLL_S: Final = 0.02  # how often a bind waiting for an earlier pod's Allocate looks at the state again
_PENDING_PODS: Final = 10_000  # pods seen by filter, kept for their bind
_EVENT_REPEAT_S: Final = 60.0


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str: ...


@dataclass
class SoleReplica:
    """Leadership when election is off: this replica always binds."""

    is_leader: bool = True
    leader: str = "this replica"


@dataclass
class Counters:
    """Plain counts the metrics endpoint exports."""

    binds: Counter[str] = field(default_factory=Counter)  # by outcome
    conflicts: int = 0
    events: int = 0
    event_failures: int = 0


class ExtenderService:
    def __init__(
        self,
        state: ClusterState,
        writer: writes.ClusterWriter,
        *,
        policy: str,
        units: UnitsConfig | None = None,
        leadership: Leadership | None = None,
        identity: str = "",
        clock: Callable[[], datetime] | None = None,
        synced: Callable[[], bool] | None = None,
        bind_wait: float = 3.0,
        allocation_timeout: float = 30.0,
        best_nodes_only: bool = True,
    ) -> None:
        self.state = state
        self.writer = writer
        self.policy = policy
        self.units = units or UnitsConfig()
        self.index = PlacementIndex(state, policy, units_per_card=self.units.units_per_card)
        self.leadership: Leadership = leadership or SoleReplica()
        self.identity = identity
        self.counters = Counters()
        self._clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._synced: Callable[[], bool] = synced or (lambda: True)  # default: a state fed directly (tests, bench)
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._node_notes: dict[str, str] = {}
        self._events_sent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.bind_wait = bind_wait
        self.best_nodes_only = best_nodes_only
        self.allocation_timeout = timedelta(seconds=allocation_timeout)
        self._turns: dict[tuple[str, int], tuple[asyncio.Lock, int]] = {}  # (node, first size) -> (lock, binds)

    def not_synced(self) -> str:
        """Why this replica cannot answer yet ("" once the first lists of nodes and pods are in)."""
        if self._synced():
            return ""
        return (
            f"extender replica {self.identity or 'unnamed'} has not synced its node and pod caches yet "
            "(first list in progress); retry shortly"
        )

    # -- filter and prioritize --------------------------------------------------------------------------------

    def filter(self, args: wire.ExtenderArgs) -> wire.ExtenderFilterResult:
        pod = args["Pod"]
        names = wire.node_names_of(args)
        if args["Nodes"] is not None:
            self._learn_nodes(args["Nodes"]["items"])
        if interest(pod) is Interest.NONE:
            cpu_only = cpu_only_demand(pod)
            if cpu_only is not None and pod_key(pod).uid:
                self.index.observe(pod_key(pod).uid, cpu_only)
            return wire.filter_result(args, names, {}, {})
        key = pod_key(pod)
        try:
            demand = pod_demand(pod, self.units)
        except ValidationError as exc:
            self._event(key, EVENT_INVALID, str(exc))
            return wire.filter_result(args, [], {}, dict.fromkeys(names, str(exc)))
        self._remember(key, pod)
        self.index.observe(key.uid, demand)
        verdict = self.index.filter(demand, names)
        if not verdict.fits and names:
            self._event(key, EVENT_UNSCHEDULABLE, unschedulable_message(len(names), verdict.refusals))
        # Only the cheapest nodes pass (best_nodes_only): kube-scheduler then scores a handful of nodes instead of
        # every fitting one, and its plugins break ties among the policy's best; the others are left out of the
        # answer (neither passed nor failed), which kube-scheduler treats as not feasible for this attempt.
        fits = self.index.best_of(demand, verdict.fits) if self.best_nodes_only else verdict.fits
        return wire.filter_result(args, fits, verdict.failed, verdict.unresolvable)

    def prioritize(self, args: wire.ExtenderArgs) -> list[tuple[int, list[str]]]:
        """The nodes scored above 0, grouped by score: ``[(score, node names), ...]`` (see ``wire``'s encoder)."""
        pod = args["Pod"]
        names = wire.node_names_of(args)
        if interest(pod) is Interest.NONE:
            return self._cpu_only_groups(pod, names)
        try:
            demand = pod_demand(pod, self.units)
        except ValidationError:
            return []
        return self.index.score_groups(demand, names)

    def _cpu_only_groups(self, pod: dict[str, Any], names: list[str]) -> list[tuple[int, list[str]]]:
        """A pod without vnpu that still came to this scheduler: nodes without cards are best (it strands none),
        then the flexnpu nodes whose fragmentation its CPU and memory grow least."""
        demand = cpu_only_demand(pod)
        if demand is None:
            return []
        cardless = [n for n in names if self.state.node(n) is None]
        groups = self.index.score_groups(demand, [n for n in names if self.state.node(n) is not None])
        if not cardless:
            return groups
        if groups and groups[0][0] == MAX_SCORE:
            return [(MAX_SCORE, cardless + groups[0][1]), *groups[1:]]
        return [(MAX_SCORE, cardless), *groups]

    # -- preempt ----------------------------------------------------------------------------------------------

    def preempt(self, args: wire.ExtenderPreemptionArgs) -> wire.ExtenderPreemptionResult:
        proposed = wire.victim_uids(args)
        pdbs = wire.pdb_violations(args)
        pod = args["Pod"]
        if interest(pod) is Interest.NONE:
            return {"NodeNameToMetaVictims": {n: wire.meta_victims(u, pdbs.get(n, 0)) for n, u in proposed.items()}}
        try:
            demand = pod_demand(pod, self.units)
        except ValidationError:
            return {"NodeNameToMetaVictims": {}}
        out: dict[str, wire.MetaVictims] = {}
        for node, uids in proposed.items():
            victims = self._victims_on(demand, node, frozenset(uids))
            if victims is not None:
                out[node] = wire.meta_victims(list(victims), pdbs.get(node, 0))
        return {"NodeNameToMetaVictims": out}

    def _victims_on(self, demand: PodDemand, node: str, already: frozenset[str]) -> tuple[str, ...] | None:
        state = self.state.node(node)
        if state is None:
            return None
        occupants = [Occupant(h.key.uid, h.priority_rank, h.assignments) for h in self.state.holdings_on(node)]
        return victims_for(demand, state, occupants, already)

    # -- bind -------------------------------------------------------------------------------------------------

    async def bind(self, args: wire.ExtenderBindingArgs) -> wire.ExtenderBindingResult:
        leadership = self.leadership
        if not leadership.is_leader:
            leader = leadership.leader or "unknown (election in progress)"
            self.counters.binds["not-leader"] += 1
            return {"Error": f"this extender replica ({self.identity}) is not the leader; the leader is {leader}"}
        key = PodKey(args["PodNamespace"], args["PodName"], args["PodUID"])
        try:
            error = await self._bind(key, args["Node"])
        except FlexnpuError as exc:
            error = f"bind {key.entity} to {args['Node']}: {exc}"
        self.counters.binds["error" if error else "bound"] += 1
        return {"Error": error}

    async def _bind(self, key: PodKey, node: str) -> str:
        pod = self._pending.pop(key.uid, None) if key.uid else None
        if pod is None:
            pod = await self.writer.get_pod(key.namespace, key.name)
            key = PodKey(key.namespace, key.name, key.uid or pod_key(pod).uid)
        if interest(pod) is Interest.NONE:
            await self.writer.bind_pod(key, node)
            return ""
        try:
            demand = pod_demand(pod, self.units)
            first = first_allocation_units(pod) or 0
        except ValidationError as exc:
            return self._refuse(key, EVENT_INVALID, str(exc))
        if first and self.allocation_timeout > timedelta(0):
            deadline = time.monotonic() + self.bind_wait
            async with self._turn(node, first, deadline) as turn:
                blocker = await self._wait_for_allocation(key, node, first, deadline) if turn else None
                if blocker is not None or not turn:
                    return self._defer(
                        key, deferred_message(node, None if blocker is None else blocker.key, first, self.bind_wait)
                    )
                assignments = self._reserve(key, node, demand, first)
        else:
            assignments = self._reserve(key, node, demand)
        if isinstance(assignments, str):
            return assignments
        return await self._write(key, node, demand, assignments, stale_reason=_has_bind_reason(pod))

    def _defer(self, key: PodKey, message: str) -> str:
        self.counters.binds["deferred"] += 1
        self._event(key, EVENT_BIND_DEFERRED, message, warning=False)
        return message

    @contextlib.asynccontextmanager
    async def _turn(self, node: str, first: int, deadline: float) -> AsyncIterator[bool]:
        """One bind at a time per node and first Allocate size, from the wait to the reservation (two binds waiting
        for the same earlier pod must not both go ahead when it is allocated); yields False when the turn did not
        come by ``deadline``."""
        turn = (node, first)
        lock, users = self._turns.get(turn) or (asyncio.Lock(), 0)
        self._turns[turn] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await lock.acquire()
            except TimeoutError:
                yield False
                return
            try:
                yield True
            finally:
                lock.release()
        finally:
            lock, users = self._turns[turn]
            if users <= 1:
                del self._turns[turn]
            else:
                self._turns[turn] = (lock, users - 1)

    async def _wait_for_allocation(self, key: PodKey, node: str, first: int, deadline: float) -> Holding | None:
        """Wait (up to ``bind_wait`` seconds) until no other pod on ``node`` with the same first Allocate size is
        still to be allocated by kubelet; the pod still in the way, if any, when the time is up.

        Kubelet's Allocate carries no pod (DESIGN.md section 4): the device plugin knows which pod an Allocate is
        for by its size among the node's pods not yet allocated, and two pods of one size would be told apart by
        nothing but kubelet's admission order, which it does not publish. A pod that no kubelet allocated within
        ``allocation_timeout`` of its bind holds nothing back any longer (its node may be down); a timeout of 0
        turns the wait off (replays and benchmarks without kubelets, where nothing would ever allocate a pod).
        """
        if not first or self.allocation_timeout <= timedelta(0):
            return None
        while True:
            blocker = self.state.allocating_on(node, first, key.uid, self._clock() - self.allocation_timeout)
            if blocker is None or time.monotonic() >= deadline:
                return blocker
            await asyncio.sleep(BIND_POLL_S)

    def _reserve(self, key: PodKey, node: str, demand: PodDemand, first: int = 0) -> tuple[CardAssignment, ...] | str:
        """Choose the cards and reserve them; a reservation race is retried once against the fresh state."""
        for attempt in range(2):
            state = self.state.node(node)
            if state is None:
                return self._refuse(key, EVENT_BIND_REFUSED, f"node {node}: has no flexnpu cards")
            try:
                assignments = choose(demand, state, self.policy, self.index.stats, memo=self.index.memo)
                self.state.reserve(
                    key,
                    node,
                    assignments,
                    demand.priority.rank,
                    demand.cpu_milli,
                    demand.host_memory_mib,
                    first_units=first,
                    at=self._clock(),
                )
                return assignments
            except PlacementError as exc:
                return self._refuse(key, EVENT_BIND_REFUSED, exc.refusal.reason)
            except ReservationConflict as exc:
                self.counters.conflicts += 1
                if attempt:
                    return self._refuse(key, EVENT_BIND_REFUSED, str(exc))
        raise AssertionError("unreachable")

    async def _write(
        self,
        key: PodKey,
        node: str,
        demand: PodDemand,
        assignments: tuple[CardAssignment, ...],
        *,
        stale_reason: bool = False,
    ) -> str:
        """The Binding carrying the assignment annotations (one write: the API server merges a Binding's
        annotations into the pod with its nodeName), then the claims; a failure before the Binding gives the cards
        back. A pod still carrying the reason of an earlier failed bind has it removed by a patch first (a
        Binding's annotations can add keys, not remove them)."""
        notes = writes.assigned_annotations(assignments, self._clock())
        try:
            if stale_reason:
                await self.writer.patch_pod_annotations(key.namespace, key.name, notes)
            await self.writer.bind_pod(key, node, {k: v for k, v in notes.items() if v is not None})
        except FlexnpuError as exc:
            self.state.release(key.uid)
            reason = f"bind to node {node} failed: {exc}"
            self._spawn(self._undo(key, reason))
            return self._refuse(key, EVENT_BIND_FAILED, reason)
        try:
            for body in writes.claims(key, node, assignments, demand.priority):
                await self.writer.create_claim(key.namespace, body)
        except FlexnpuError as exc:
            # The pod is bound and its cards are its own; only the node daemon registration is missing.
            self._event(key, EVENT_CLAIM_FAILED, f"pod bound to {node}, but its VNpuClaim failed: {exc}")
        # No Event of its own for a bind that went through: kube-scheduler posts "Scheduled" with the node and the
        # pod's annotations carry the cards (an Event per bind was a fourth API write on the scheduling path).
        return ""

    async def _undo(self, key: PodKey, reason: str) -> None:
        try:
            await self.writer.patch_pod_annotations(key.namespace, key.name, writes.failed_annotations(reason))
        except FlexnpuError as exc:
            log.warning("pod %s: could not mark the failed bind: %s", key.entity, exc)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _refuse(self, key: PodKey, reason: str, message: str) -> str:
        self._event(key, reason, message)
        return message

    def _remember(self, key: PodKey, pod: dict[str, Any]) -> None:
        if not key.uid:
            return
        self._pending[key.uid] = pod
        self._pending.move_to_end(key.uid)
        if len(self._pending) > _PENDING_PODS:
            self._pending.popitem(last=False)

    def _learn_nodes(self, items: list[dict[str, Any]]) -> None:
        """nodeCacheCapable false: nodes in the request refresh the inventories the watch has not delivered yet."""
        for item in items:
            meta = item.get("metadata") or {}
            name, text = str(meta.get("name")), str((meta.get("annotations") or {}).get(ANNOTATION_INVENTORY, ""))
            if text and self._node_notes.get(name) != text:
                self._node_notes[name] = text
                record = node_record(item)
                if record is None:
                    self.state.set_node(name, None)
                else:
                    self.state.set_node(name, record.inventory, record.cpu_milli, record.memory_mib)

    def _event(self, key: PodKey, reason: str, message: str, *, warning: bool = True) -> None:
        now = time.monotonic()
        sent = self._events_sent.get((key.uid, message))
        if sent is not None and now - sent < _EVENT_REPEAT_S:
            return
        self._events_sent[(key.uid, message)] = now
        while len(self._events_sent) > _PENDING_PODS:
            self._events_sent.popitem(last=False)
        body = writes.event(key, reason, message, warning=warning, instance=self.identity)
        self._spawn(self._send_event(key.namespace, body))

    async def _send_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        try:
            await self.writer.create_event(namespace, body)
            self.counters.events += 1
        except FlexnpuError as exc:
            self.counters.event_failures += 1
            log.warning("event %s: %s", body.get("reason"), exc)

    def _spawn(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # called outside a loop (a thread in tests): nothing to send the event with
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the background Events (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def cpu_only_demand(pod: dict[str, Any]) -> PodDemand | None:
    """The demand of a pod that asks for no vnpu but for CPU or memory; None when it asks for neither."""
    try:
        cpu, memory = pod_requests(pod)
    except ValidationError:
        return None
    if not cpu and not memory:
        return None
    return PodDemand(request=CPU_ONLY, cpu_milli=cpu, host_memory_mib=memory)


def deferred_message(node: str, blocker: PodKey | None, first: int, waited: float) -> str:
    """Why a bind was put off: the earlier pod of the same first Allocate size that kubelet has not allocated (or,
    ``None``, another bind of that size to the node still waiting ahead of it)."""
    ahead = (
        f"pod {blocker.entity} asks for {first} unit(s) in its first container too and kubelet has not allocated it yet"
        if blocker is not None
        else f"another bind of a pod asking for {first} unit(s) in its first container is waiting ahead of it"
    )
    return (
        f"bind to node {node} deferred: {ahead} (waited {waited:g} s); kubelet's Allocate names no pod, so two "
        "such pods are bound to one node one after the other; the scheduler retries"
    )


def unschedulable_message(nodes: int, refusals: list[Refusal]) -> str:
    """One line for the pod's Event: how many nodes refused for which reason, and the closest miss."""
    kinds = Counter(r.kind.value for r in refusals)
    if nodes > len(refusals):
        kinds["no-inventory"] += nodes - len(refusals)
    parts = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    closest = min(refusals, key=lambda r: (r.missing_units, r.missing_memory_mib), default=None)
    tail = f"; closest: {closest.reason}" if closest is not None else ""
    return f"0/{nodes} nodes can take the pod ({parts}){tail}"


def _has_bind_reason(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, Mapping) else None
    return isinstance(notes, Mapping) and ANNOTATION_BIND_REASON in notes
