"""The extender's in-memory model of the cluster: every flexnpu node's cards and what pods hold or reserve on them.

Fed by the node and pod watches (:mod:`flexnpu.extender.informers`) and by binds. A bind *reserves* its cards here
before it writes anything to the API server, under one lock, so two concurrent binds can never take the same units
(no node locks, no annotations used as locks: the leader is the only binder). The reservation is released when
the write fails, and replaced by the observed pod once the watch shows the pod carrying its assignment. Pods that
finish or are deleted give their share back.

For speed the state keeps one ready :class:`NodeState` per node, rebuilt only when that node changes, and a change
log (node names in order of change) so that caches of placement decisions can refresh only the nodes that moved.

Besides the cards, the state keeps each node's allocatable CPU and memory (from ``status.allocatable``) and the CPU
and memory requests of every live pod bound to it, CPU-only pods included, so that fit, fragmentation and CPU
stranding see the same node as kube-scheduler and as the openb replay.

And it keeps the node's VNpuClaims (the claim watch): a claim whose pod holds nothing here (the pod is gone while
the operator has not deregistered it yet, or a claim made by hand) still holds its units and memory on flexnpud,
so it counts on its card until the claim itself is gone. Without that a pod placed right after another left would
be refused by the daemon for a few seconds, and its container would start before its registration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from flexnpu.annotations import CardAssignment, Inventory
from flexnpu.errors import FlexnpuError
from flexnpu.extender.core.model import NodeState, node_state
from flexnpu.extender.pods import PodFacts, PodKey

# When the change log grows past this many entries beyond what any reader needs, it is compacted.
_LOG_COMPACT_AT = 100_000


class ReservationConflict(FlexnpuError):
    """The cards a bind wants are no longer free (another bind or a watch event took them first)."""

    def __init__(self, node: str, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(f"node {node}: {reason}")


@dataclass(frozen=True)
class Holding:
    """One pod's shares on one node: observed from the watch, or reserved by a bind in flight."""

    key: PodKey
    node: str
    assignments: tuple[CardAssignment, ...]
    reserved: bool
    priority_rank: int = 1
    cpu_milli: int = 0
    memory_mib: int = 0
    first_units: int = 0
    """Units of its first Allocate (flexnpu.extender.pods.first_allocation_units); 0 when unknown."""
    allocating_since: datetime | None = None
    """Since when kubelet may still be about to allocate it (its reservation or bind time); None once it is
    allocated or started."""


@dataclass(frozen=True)
class HeldClaim:
    """A VNpuClaim as the claim watch shows it: what it holds on flexnpud (card ``npu`` of ``node``)."""

    uid: str
    pod_uid: str
    node: str
    npu: int
    units: int
    memory_mib: int
    namespace: str  # a claim is its pod's only in the pod's namespace (anyone may label one with any uid)


@dataclass(frozen=True)
class NodeRecord:
    """What the node watch gives for one flexnpu node: its inventory and allocatable CPU and memory (0 = unknown)."""

    inventory: Inventory
    cpu_milli: int = 0
    memory_mib: int = 0


class ClusterState:
    """Thread-safe: every method takes the lock, so binds from threads and watch callbacks may interleave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, NodeRecord] = {}
        self._nodes: dict[str, NodeState] = {}
        self._holdings: dict[str, Holding] = {}  # by pod uid
        self._on_node: dict[str, set[str]] = {}  # node -> pod uids
        self._claims: dict[str, HeldClaim] = {}  # by claim uid
        self._claims_on: dict[str, set[str]] = {}  # node -> claim uids
        self._log: list[str] = []
        self._log_base = 0  # sequence number of _log[0]
        self._membership = 0  # grows when a node appears or goes

    # -- reading ---------------------------------------------------------------------------------------------

    @property
    def sequence(self) -> int:
        """Grows by one with every change of any node; a cache that saw sequence s refreshes changed_since(s)."""
        return self._log_base + len(self._log)

    @property
    def membership(self) -> int:
        """Grows by one whenever a node appears or goes (not when one changes)."""
        return self._membership

    def changed_since(self, sequence: int) -> set[str] | None:
        """Names of nodes changed after ``sequence``; None when the log no longer reaches back that far."""
        with self._lock:
            if sequence < self._log_base:
                return None
            return set(self._log[sequence - self._log_base :])

    def node(self, name: str) -> NodeState | None:
        return self._nodes.get(name)

    def node_names(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def nodes(self) -> dict[str, NodeState]:
        """A consistent snapshot of every node (the dict is a copy; the NodeStates are immutable)."""
        with self._lock:
            return dict(self._nodes)

    def holding(self, uid: str) -> Holding | None:
        return self._holdings.get(uid)

    def holdings_on(self, node: str) -> list[Holding]:
        with self._lock:
            return [self._holdings[uid] for uid in self._on_node.get(node, ())]

    def allocating_on(self, node: str, first_units: int, other_than: str, since: datetime) -> Holding | None:
        """A pod on ``node`` other than ``other_than`` whose first Allocate asks for ``first_units`` too and that
        kubelet may still be about to allocate (allocating since ``since`` or later); None when there is none."""
        with self._lock:
            for uid in self._on_node.get(node, ()):
                h = self._holdings[uid]
                if (
                    uid != other_than
                    and h.first_units == first_units
                    and h.allocating_since is not None
                    and h.allocating_since >= since
                ):
                    return h
            return None

    # -- nodes -----------------------------------------------------------------------------------------------

    def set_node(self, name: str, inventory: Inventory | None, cpu_milli: int = 0, memory_mib: int = 0) -> None:
        """A node's inventory (and allocatable CPU and memory) appeared or changed; None removes it (no or
        unreadable inventory)."""
        with self._lock:
            if inventory is None:
                self._drop_node(name)
                return
            record = NodeRecord(inventory, max(0, cpu_milli), max(0, memory_mib))
            if self._records.get(name) == record:
                return
            self._records[name] = record
            self._rebuild(name)

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._drop_node(name)

    def replace_nodes(self, nodes: Mapping[str, Inventory | NodeRecord]) -> None:
        """After a re-list: exactly these nodes exist."""
        for name in set(self._records) - set(nodes):
            self.remove_node(name)
        for name, node in nodes.items():
            record = node if isinstance(node, NodeRecord) else NodeRecord(node)
            self.set_node(name, record.inventory, record.cpu_milli, record.memory_mib)

    # -- pods ------------------------------------------------------------------------------------------------

    def observe_pod(self, pod: PodFacts) -> None:
        """A watched pod's current facts. It holds its cards while assigned, placed and not finished, and its CPU
        and memory while placed and not finished."""
        with self._lock:
            current = self._holdings.get(pod.key.uid)
            if not pod.holds_cards:
                # A reservation outlives watch events that do not show the assignment yet (the bind is writing it),
                # but not the pod finishing or going away.
                if current is not None and current.reserved and pod.live:
                    return
                if pod.holds_resources:
                    self._put(self._observed(pod))
                elif current is not None:
                    self._forget(pod.key.uid)
                return
            if pod.node_name:
                self._put(self._observed(pod))
            elif current is not None and not current.reserved:
                self._forget(pod.key.uid)
            # An assigned pod not bound yet holds cards only through a bind in flight: without one, its annotation
            # is left over from a failed bind and the scheduler will place it again.

    def forget_pod(self, uid: str) -> None:
        """The pod is gone: its share (observed or reserved) is free again."""
        with self._lock:
            self._forget(uid)

    def replace_pods(self, pods: Iterable[PodFacts]) -> None:
        """After a re-list: exactly these pods exist (reservations in flight are kept)."""
        seen = set()
        for pod in pods:
            seen.add(pod.key.uid)
            self.observe_pod(pod)
        with self._lock:
            stale = [uid for uid, h in self._holdings.items() if uid not in seen and not h.reserved]
            for uid in stale:
                self._forget(uid)

    # -- claims ----------------------------------------------------------------------------------------------

    def observe_claim(self, claim: HeldClaim) -> None:
        """A watched VNpuClaim appeared or changed."""
        with self._lock:
            old = self._claims.get(claim.uid)
            if old == claim:
                return
            self._drop_claim(claim.uid)
            self._claims[claim.uid] = claim
            self._claims_on.setdefault(claim.node, set()).add(claim.uid)
            self._rebuild(claim.node)

    def forget_claim(self, uid: str) -> None:
        """The claim is gone (its registration with it)."""
        with self._lock:
            self._drop_claim(uid)

    def replace_claims(self, claims: Iterable[HeldClaim]) -> None:
        """After a re-list: exactly these claims exist."""
        seen = set()
        for claim in claims:
            seen.add(claim.uid)
            self.observe_claim(claim)
        with self._lock:
            for uid in [uid for uid in self._claims if uid not in seen]:
                self._drop_claim(uid)

    def unheld_claims_on(self, node: str) -> list[HeldClaim]:
        """The node's claims that count on their own: their pod holds nothing here."""
        with self._lock:
            return self._unheld_claims(node)

    # -- binds -----------------------------------------------------------------------------------------------

    def reserve(
        self,
        key: PodKey,
        node: str,
        assignments: Sequence[CardAssignment],
        priority_rank: int = 1,
        cpu_milli: int = 0,
        memory_mib: int = 0,
        first_units: int = 0,
        at: datetime | None = None,
    ) -> None:
        """Take ``assignments`` (and the CPU and memory) on ``node`` for the pod, or raise ReservationConflict
        naming what is missing. ``at``: when, for :meth:`allocating_on` (None: the reservation holds back no bind)."""
        with self._lock:
            state = self._nodes.get(node)
            if state is None:
                raise ReservationConflict(node, "has no flexnpu inventory")
            if key.uid in self._holdings:
                held = self._holdings[key.uid].node
                raise ReservationConflict(node, f"pod {key.entity} already holds cards on {held}")
            self._check_room(state, assignments)
            self._check_node_room(state, cpu_milli, memory_mib)
            self._put(
                Holding(
                    key,
                    node,
                    tuple(assignments),
                    reserved=True,
                    priority_rank=priority_rank,
                    cpu_milli=cpu_milli,
                    memory_mib=memory_mib,
                    first_units=first_units,
                    allocating_since=at,
                )
            )

    def release(self, uid: str) -> None:
        """A bind failed: give back its reservation (an observed holding is left alone)."""
        with self._lock:
            current = self._holdings.get(uid)
            if current is not None and current.reserved:
                self._forget(uid)

    # -- internals (lock held) -------------------------------------------------------------------------------

    @staticmethod
    def _observed(pod: PodFacts) -> Holding:
        return Holding(
            pod.key,
            pod.node_name,
            pod.assignments,
            reserved=False,
            priority_rank=pod.priority.rank,
            cpu_milli=pod.cpu_milli,
            memory_mib=pod.memory_mib,
            first_units=pod.first_units,
            allocating_since=pod.allocating_since,
        )

    @staticmethod
    def _check_node_room(state: NodeState, cpu_milli: int, memory_mib: int) -> None:
        if state.cpu_tracked and cpu_milli > state.cpu_milli_free:
            raise ReservationConflict(state.name, f"has {state.cpu_milli_free}m CPU free, {cpu_milli}m needed")
        if state.host_memory_tracked and memory_mib > state.host_memory_mib_free:
            raise ReservationConflict(
                state.name, f"has {state.host_memory_mib_free} MiB of memory free, {memory_mib} MiB needed"
            )

    def _check_room(self, state: NodeState, assignments: Sequence[CardAssignment]) -> None:
        wanted: dict[str, tuple[int, int]] = {}
        for a in assignments:
            units, memory = wanted.get(a.uuid, (0, 0))
            wanted[a.uuid] = (units + a.units, memory + a.memory_mib)
        cards = {c.uuid: c for c in state.cards}
        for uuid, (units, memory) in wanted.items():
            card = cards.get(uuid)
            if card is None:
                raise ReservationConflict(state.name, f"has no card {uuid}")
            if not card.healthy:
                raise ReservationConflict(state.name, f"card {card.index} ({uuid}) is unhealthy")
            if card.units_free < units:
                raise ReservationConflict(
                    state.name, f"card {card.index} ({uuid}) has {card.units_free} free units, {units} needed"
                )
            if card.memory_free_mib < memory:
                raise ReservationConflict(
                    state.name,
                    f"card {card.index} ({uuid}) has {card.memory_free_mib} MiB free memory, {memory} MiB needed",
                )

    def _put(self, holding: Holding) -> None:
        old = self._holdings.get(holding.key.uid)
        if old == holding:
            return
        if old is not None:
            self._on_node.get(old.node, set()).discard(holding.key.uid)
            if old.node != holding.node:
                self._rebuild(old.node)
        self._holdings[holding.key.uid] = holding
        self._on_node.setdefault(holding.node, set()).add(holding.key.uid)
        self._rebuild(holding.node)

    def _forget(self, uid: str) -> None:
        old = self._holdings.pop(uid, None)
        if old is not None:
            self._on_node.get(old.node, set()).discard(uid)
            self._rebuild(old.node)

    def _drop_claim(self, uid: str) -> None:
        old = self._claims.pop(uid, None)
        if old is not None:
            self._claims_on.get(old.node, set()).discard(uid)
            self._rebuild(old.node)

    def _unheld_claims(self, node: str) -> list[HeldClaim]:
        out = []
        for uid in self._claims_on.get(node, ()):
            claim = self._claims[uid]
            holding = self._holdings.get(claim.pod_uid) if claim.pod_uid else None
            if holding is None or holding.node != node or holding.key.namespace != claim.namespace:
                out.append(claim)
        return out

    def _drop_node(self, name: str) -> None:
        self._records.pop(name, None)
        if self._nodes.pop(name, None) is not None:
            self._membership += 1
            self._changed(name)

    def _rebuild(self, name: str) -> None:
        record = self._records.get(name)
        if record is None:
            return
        holdings = [self._holdings[uid] for uid in self._on_node.get(name, ())]
        assignments = [a for h in holdings for a in h.assignments]
        by_index = {card.index: card.uuid for card in record.inventory.cards}
        assignments += [
            CardAssignment(by_index[c.npu], c.npu, c.units, c.memory_mib)
            for c in self._unheld_claims(name)
            if c.npu in by_index
        ]
        if name not in self._nodes:
            self._membership += 1
        self._nodes[name] = node_state(
            name,
            record.inventory,
            assignments,
            cpu_milli_total=record.cpu_milli,
            cpu_milli_used=sum(h.cpu_milli for h in holdings),
            host_memory_mib_total=record.memory_mib,
            host_memory_mib_used=sum(h.memory_mib for h in holdings),
        )
        self._changed(name)

    def _changed(self, name: str) -> None:
        self._log.append(name)
        if len(self._log) > _LOG_COMPACT_AT:
            drop = len(self._log) // 2
            self._log = self._log[drop:]
            self._log_base += drop
