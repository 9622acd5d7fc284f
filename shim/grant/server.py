"""The grant server inside flexnpud: the unix socket through which in-pod runtimes ask for and return slices.

It drives one pure ``CardScheduler`` per card with the monotonic clock, and only translates: a runtime's
``want`` / ``release`` / ``extend`` become scheduler events, the scheduler's decisions become ``grant`` and
``revoke`` messages. Wire: newline-delimited JSON (``flexnpu.shim.runtime.wire``), parsed into typed events by
``flexnpu.shim.grant.messages`` before anything changes, so that no value a pod sends can raise half-way through
a state change. The shared-memory slots (``flexnpu.shim.grant.shmgrants``) are read by the timer (a poll every
few slices) and, at once, by the doorbell thread (``flexnpu.shim.grant.bells``) when a tenant rings: a want, or a
yield (a holder with nothing in flight giving its grant back while another tenant waits: charged until the daemon
saw it). Connections are served by ``flexnpu.shim.grant.unixserver`` (one reader thread each, capped in
total and per pod); a timer thread calls ``decide`` at the scheduler's ``wake_at`` and reclaims grants whose
holder went silent (a process that stopped launching while holding the card, or ignored a revoke). A holder
whose connection closes (it exited or was killed) gives the card back at once, charged the time it held it.
A slot holder is renewed, or its hand-over decided, a quarter slice before its deadline (``_renew_ahead``): the
successor is then published in the card region ahead of the deadline and takes the card there by itself.

Messages (client -> server): ``hello {id}``, ``want``, ``release {seq, used_us, want, ops_used}``,
``extend {seq, used_us}``, ``ping``. Server -> client: ``welcome {share, priority, slice_us, memory_mib}``,
``grant {seq, budget_us, ops, inflight_us}``, ``drain {seq}`` (extend refused: drain, release),
``revoke {seq}``, ``error {code, message}`` (then the server closes), ``pong``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flexnpu.cards import Card
from flexnpu.registration import Registration
from flexnpu.shim.core.slicing import CardScheduler, Decision, Grant, SlicePolicy, Tenant, UnknownTenantError
from flexnpu.shim.grant import messages
from flexnpu.shim.grant.bells import Doorbells
from flexnpu.shim.grant.identity import IdentityError, Peer, check_peer, peer_of
from flexnpu.shim.grant.messages import BadMessage
from flexnpu.shim.grant.shmgrants import MIB, ShmGrants, usage_delta_us
from flexnpu.shim.grant.stats import TenantStats
from flexnpu.shim.grant.unixserver import Limits, UnixServer, shutdown
from flexnpu.shim.runtime import wire
from flexnpu.shim.runtime.wire import LineSocket, Message, WireError

log = logging.getLogger(__name__)

# A holder that neither releases nor extends this long after its budget ran out loses the grant.
EXPIRY_GRACE_US = 20_000
# A revoked holder that does not release within this long loses the grant (it stopped launching: idle).
REVOKE_GRACE_US = 10_000
# A connection that has not said hello within this long is closed (it holds a thread and a connection slot).
HELLO_TIMEOUT_S = 5.0
# Grant-path messages are tens of bytes; a line longer than this is garbage and closes the connection.
MAX_LINE = 4096
# Connections at once: all pods together, and one pod (a pod has a few processes, each with one connection).
LIMITS = Limits(max_connections=1024, max_per_peer=64)

# How often slots are read for a new want (or a yield), in slices: the fallback for what the doorbells do not
# bring at once. Every SLOT_POLL_SLICES, the slots in use lately (holding, waiting, or a grant that ended within
# the scheduler's window: an early want near a deadline and a withdrawn want ring nothing), those the doorbell
# thread (``flexnpu.shim.grant.bells``) does not watch (past its 127, over their ring budget) and, on a kernel
# without futex_waitv, every slot; every slot at the slower sweep (a tenant that sets its flag without ringing).
# A registered pod that does nothing then costs flexnpud a sweep, not a poll: with 80 idle registrations the poll
# of every slot every 4 slices was 5.4% of a core. The doorbell thread sees a ring at once; a thread per slot
# asleep on its doorbell, tried before, was worse on a loaded 2-core VM.
SLOT_POLL_SLICES = 4
SLOT_SWEEP_SLICES = 50
# Rings of one slot's doorbell the daemon handles, per slice on average (an honest tenant rings twice per grant:
# its want and its yield), and at once.
RINGS_PER_SLICE = 4
RING_BURST = 64

# Run-ahead the runtime may queue on the device (the wait it can impose on a revoke): generous when nobody of a
# higher priority shares the card (keeps a lone tenant at native throughput), short when someone does.
RUN_AHEAD_US = 2000
RUN_AHEAD_CONTENDED_US = 500

# A slot's holder is charged at its deadline without draining: its report may include work that ran past the
# previous deadline (the interposer's in-flight cap, and one kernel it launched with nothing in flight). One charge
# may exceed the time held by this much; the rest of a larger report is carried to the next charge, and a backlog
# past one window is a lie that is dropped.
SLOT_CHARGE_GRACE_US = 5000
# The most of a former holder's work after its deadline that is credited to the next holder (its in-flight cap
# and one long kernel): a report past it is not believed.
MAX_TAIL_US = 10_000

# A slot holder that still wants the card is renewed this long before its deadline (a quarter of the slice,
# within these bounds), when the scheduler would pick it again anyway: the renewal is in the card region before the
# tenant's gate reaches the deadline, so a tenant that keeps the card never drains and waits at a slice boundary
# for the daemon's reaction. Renewed at the deadline, a lone bursty tenant on a 2-core VM lost 40% of its device
# time to that wait.
RENEW_AHEAD_MIN_US = 200
RENEW_AHEAD_MAX_US = 1000
# A slot holder that nobody waits behind is renewed for this many slices at once, and cut back to the end of its
# current slice when a waiter comes (``_cut_back``): a lone busy tenant costs the daemon one wake-up per this many
# slices instead of one per slice, and a newcomer waits no longer than it would have.
LONE_SLICES = 8

CardKey = tuple[int, int]


def renew_ahead_us(slice_us: int) -> int:
    """How long before a slot grant's deadline its renewal is tried (pure)."""
    return min(RENEW_AHEAD_MAX_US, max(RENEW_AHEAD_MIN_US, slice_us // 4))


@dataclass(eq=False)
class Session:
    """One connected runtime bound to one registration, or (``conn`` None) a registration's shared-memory slot."""

    conn: LineSocket | None
    peer: Peer
    flexnpu_id: str = ""
    card: CardKey = (-1, -1)
    wants: bool = False
    seq: int = 0
    revoked_seq: int = -1
    holding: bool = False
    granted_at_us: int = 0
    budget_us: int = 0
    deadline_us: int = 0
    want_since_us: int = 0
    used_ns_seen: int = 0  # a slot's cumulative used_ns at its last charge
    excluded_ns_seen: int = 0  # its cumulative excluded_ns then
    tail_allowance_us: int = 0  # other holders' tails credited to its holdings, not yet matched by its excluded_ns
    renew_at_us: int | None = None  # a slot holder's renewal is tried then (before its deadline)

    def send(self, message: Message) -> bool:
        """Send without blocking; False when the peer is gone or does not read (the session is then dropped)."""
        if self.conn is None:
            return True  # a slot's tenant reads the card region instead
        data = wire.encode(message)
        try:
            return self.conn.sock.send(data, socket.MSG_DONTWAIT) == len(data)  # a part of a line is a lost line
        except OSError:
            return False


@dataclass(eq=False)
class _Ahead:
    """A slot holder's hand-over decided before its deadline (``GrantServer._hand_over_ahead``): it was charged
    until ``at_us`` and left the scheduler then; ``successor`` (None: nobody) holds the card from ``at_us``, published
    as the card region's next grant until the timer promotes it."""

    former: Session
    successor: Session | None
    at_us: int
    charged_us: int
    unexcused_us: int = 0  # of the charge, what the slot's timing left out and no tail excused


@dataclass
class _Card:
    scheduler: CardScheduler
    waiting: dict[str, deque[Session]] = field(default_factory=dict)
    holders: dict[str, Session] = field(default_factory=dict)
    wake_at_us: int | None = None
    published: str | None = None  # whom the card's shared-memory region names as the holder
    # The last slot holder whose grant ended at its deadline, undrained: (flexnpu_id, its used_ns then). Its
    # usage since is work the card ran during the next holding, credited to that holder (its charge counts less).
    tail_of: tuple[str, int] | None = None
    tail_credited_us: int = 0
    # When the last holding ended (its deadline, its yield, its release), until the next grant is published with it
    # as the card's ended_ns (a direct hand-over); 0 once the card went free or was handed over (a grant on a free
    # card then says 0: the tenant times it as an acquire, not a hand-off).
    ended_ns: int = 0
    ahead: _Ahead | None = None  # a hand-over at the holder's deadline, decided and published before it


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _pod_or_process(peer: Peer) -> Hashable:
    """What the per-peer connection cap counts: the pod, or the process for a peer in no pod."""
    return ("pod", peer.pod_uid) if peer.pod_uid else ("pid", peer.pid)


class GrantServer:
    """Serves grants for the registrations of ``cards`` on ``socket_path`` (see the module docstring).

    ``clock_us`` is the time every decision uses; tests pass a manual clock with ``timer=False`` and call
    ``run_timers`` themselves, so that expiry happens exactly when they move the clock.
    """

    def __init__(
        self,
        socket_path: str,
        policy: SlicePolicy,
        cards: Sequence[Card],
        *,
        proc_root: str | os.PathLike[str] = "/proc",
        clock_us: Callable[[], int] = _now_us,
        expiry_grace_us: int = EXPIRY_GRACE_US,
        revoke_grace_us: int = REVOKE_GRACE_US,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        limits: Limits = LIMITS,
        timer: bool = True,
        shm_dir: str | None = None,
        daemon_pid_start: int = 0,
        doorbells: bool = True,
    ) -> None:
        self.socket_path = socket_path
        self.policy = policy
        self._proc_root = Path(proc_root)
        self._clock = clock_us
        self._expiry_grace_us = expiry_grace_us
        self._revoke_grace_us = revoke_grace_us
        self._hello_timeout_s = hello_timeout_s
        self._cards = {(c.index, c.chip): _Card(CardScheduler(policy)) for c in cards}
        self._registrations: dict[str, Registration] = {}
        self._sessions: set[Session] = set()
        self._stats: dict[str, TenantStats] = {}
        self._lock = threading.Lock()
        self._timer_cond = threading.Condition(self._lock)
        self._stopping = False
        self._use_timer = timer
        self._timer_thread: threading.Thread | None = None
        self._grant_seq = 0
        self._timer_due_us: int | None = None
        self._bells = (
            Doorbells(
                self._on_ring,
                rate_per_s=RINGS_PER_SLICE * 1e6 / policy.slice_us,
                burst=RING_BURST,
                stamp=clock_us,
            )
            if shm_dir is not None and doorbells
            else None
        )
        if self._bells is not None:
            self._bells.on_start = _latency_priority
        self._shm = None if shm_dir is None else ShmGrants(shm_dir, cards, daemon_pid_start, watch=self._bells)
        self._slot_sessions: dict[str, Session] = {}
        self._next_poll_us: int | None = None
        self._next_sweep_us = 0
        self._server: UnixServer[Peer] = UnixServer(
            socket_path,
            self._serve,
            lambda sock: peer_of(sock, self._proc_root),
            name="grant socket",
            limits=limits,
            peer_key=_pod_or_process,
            mode=0o666,  # pods run as any uid: identity is the cgroup
            refuse=_refuse_busy,
        )

    # ----- the API flexnpud uses ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the shared-memory regions (if any), listen on the socket, serve in background threads."""
        if self._shm is not None:
            self._shm.start()
        if self._bells is not None:
            self._bells.start()
        self._server.start()
        if self._use_timer:
            self._timer_thread = threading.Thread(target=self._timer, name="grant-timer", daemon=True)
            self._timer_thread.start()

    def set_registrations(self, registrations: Sequence[Registration]) -> None:
        """The full current set of registrations; sessions of removed ones are told and closed."""
        with self._lock:
            self._registrations = {r.flexnpu_id: r for r in registrations}
            now = self._clock()
            for key, card in self._cards.items():
                tenants = [
                    Tenant(r.flexnpu_id, r.aicore_alloc, r.priority) for r in registrations if (r.npu, r.chip) == key
                ]
                card.scheduler.set_tenants(tenants, now)
                for tenant in tenants:
                    self._stats.setdefault(tenant.tenant_id, TenantStats(now))
            for flexnpu_id in list(self._stats):
                if flexnpu_id not in self._registrations:
                    del self._stats[flexnpu_id]
            for session in list(self._sessions):
                if session.flexnpu_id and session.flexnpu_id not in self._registrations:
                    self._refuse_later(
                        session, wire.ERR_UNREGISTERED, f"registration {session.flexnpu_id!r} was removed"
                    )
            self._sync_slots(registrations, now)
            for key in self._cards:
                self._decide(key, now)

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        """Live figures by flexnpu_id: device_time_us (as charged), grants, wait_p99_us, achieved_share; with a
        shared-memory slot also memory_used_mib, memory_peak_mib, denied_allocs and memory_reclaimed_mib (what ended
        processes left and the pod's later processes gave back) as the pod reports them."""
        with self._lock:
            now = self._clock()
            return {fid: {**s.figures(now), **self._slot_figures(fid)} for fid, s in self._stats.items()}

    def _slot_figures(self, flexnpu_id: str) -> dict[str, float]:
        report = None if self._shm is None else self._shm.report(flexnpu_id)
        if report is None:
            return {}
        return {
            "memory_used_mib": report.mem_used_bytes / MIB,
            "memory_peak_mib": report.mem_peak_bytes / MIB,
            "denied_allocs": float(report.denied_allocs),
            "memory_reclaimed_mib": report.reclaimed_bytes / MIB,
        }

    def holders(self) -> Mapping[CardKey, frozenset[str]]:
        """Who holds each card now, as the scheduler sees it."""
        with self._lock:
            return {key: card.scheduler.holders for key, card in self._cards.items()}

    def doorbell_counts(self, flexnpu_id: str) -> tuple[int, int]:
        """(rings handled, rings dropped at the ring budget) of a slot's doorbell; (0, 0) without the thread."""
        return (0, 0) if self._bells is None else self._bells.counts(flexnpu_id)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._server.connections

    @property
    def refused_connections(self) -> int:
        """Connections turned away at a limit since the start."""
        return self._server.refused

    @property
    def serving(self) -> bool:
        """True while the socket accepts connections."""
        return self._server.alive

    def run_timers(self) -> None:
        """Reclaim expired grants and make the decisions that are due (what the timer thread does)."""
        with self._lock:
            self._run_due(self._clock())

    def stop(self) -> None:
        """Stop serving, close every session and remove the socket."""
        with self._lock:
            self._stopping = True
            self._timer_cond.notify_all()
        self._server.stop()
        if self._timer_thread is not None:
            self._timer_thread.join(timeout=5)
        if self._bells is not None:
            self._bells.stop()  # not under the lock: its thread may be waiting for it
        if self._shm is not None:
            with self._lock:
                self._shm.stop()

    def __enter__(self) -> GrantServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- connections ----------------------------------------------------------------------------------------

    def _serve(self, sock: socket.socket, peer: Peer) -> None:
        conn = LineSocket(sock, max_line=MAX_LINE)
        session = Session(conn, peer)
        with self._lock:
            if self._stopping:
                return
            self._sessions.add(session)
        try:
            self._hello(session, messages.parse_hello(conn.receive(timeout=self._hello_timeout_s)))
            while True:
                event = messages.parse(conn.receive())
                with self._lock:
                    if self._stopping:
                        return
                    self._handle(session, event)
        except BadMessage as exc:
            session.send({"op": wire.OP_ERROR, "code": exc.code, "message": str(exc)})
        except TimeoutError:
            session.send(
                {
                    "op": wire.OP_ERROR,
                    "code": wire.ERR_PROTOCOL,
                    "message": f"no hello within {self._hello_timeout_s:g} s",
                }
            )
        except (WireError, OSError):
            pass
        finally:
            with self._lock:
                self._drop(session)

    def _hello(self, session: Session, hello: messages.Hello) -> None:
        flexnpu_id = hello.flexnpu_id
        with self._lock:
            registration = self._registrations.get(flexnpu_id) or self._of_pod(session.peer.pod_uid)
            if registration is not None:
                flexnpu_id = registration.flexnpu_id
            if registration is None or (registration.npu, registration.chip) not in self._cards:
                raise BadMessage(
                    wire.ERR_UNKNOWN_REGISTRATION,
                    f"no registration {flexnpu_id!r} on this node's cards (register it first: "
                    f"POST /device/register or a VNpuClaim)",
                )
            try:
                check_peer(session.peer, flexnpu_id, registration.pod_uid)
            except IdentityError as exc:
                log.warning("grant socket: refused %s: %s", session.peer.describe(), exc)
                raise BadMessage(wire.ERR_IDENTITY_MISMATCH, str(exc)) from exc
            session.flexnpu_id = flexnpu_id
            session.card = (registration.npu, registration.chip)
            session.send(_welcome(registration, self.policy))

    def _of_pod(self, pod_uid: str) -> Registration | None:
        """The one registration made for the peer's pod (Allocate names the pod; the operator names the claim)."""
        if not pod_uid:
            return None
        mine = [r for r in self._registrations.values() if r.pod_uid == pod_uid]
        return mine[0] if len(mine) == 1 else None

    def _handle(self, session: Session, event: messages.Event) -> None:
        """Apply one parsed event (under the lock). Values are already validated, so nothing here raises."""
        now = self._clock()
        if isinstance(event, messages.Ping):
            session.send({"op": wire.OP_PONG})
            return  # nothing changed for the scheduler
        if session.flexnpu_id not in self._registrations:
            return  # removed: the session is being closed (``set_registrations``)
        if isinstance(event, messages.Want):
            self._want(session, now)
        elif isinstance(event, messages.Release):
            self._release(session, event, now)
        else:
            self._extend(session, event, now)
        self._decide(session.card, now)

    def _refuse_later(self, session: Session, code: str, text: str) -> None:
        session.send({"op": wire.OP_ERROR, "code": code, "message": text})
        _hang_up(session)  # the reader thread wakes up and drops the session

    # ----- scheduler events (under the lock) ------------------------------------------------------------------

    def _want(self, session: Session, now: int) -> None:
        if self._enqueue(session, now) and session.flexnpu_id not in self._cards[session.card].holders:
            self._cards[session.card].scheduler.want(session.flexnpu_id, now)

    def _enqueue(self, session: Session, now: int) -> bool:
        """Queue the session for its tenant's next grant; False when it already waits, holds, or is unregistered."""
        if session.wants or session.holding or session.flexnpu_id not in self._registrations:
            return False
        session.wants = True
        session.want_since_us = now
        self._cards[session.card].waiting.setdefault(session.flexnpu_id, deque()).append(session)
        return True

    def _release(self, session: Session, release: messages.Release, now: int) -> None:
        if session.holding and release.seq == session.seq:
            session.holding = False
            if release.want:
                self._enqueue(session, now)  # before the release, so the scheduler hears still_wants=True
            self._end_grant(session, release.used_us, now, release.ops_used)
        elif release.want:
            self._want(session, now)

    def _extend(self, session: Session, extend: messages.Extend, now: int) -> None:
        if not session.holding or extend.seq != session.seq:
            session.send({"op": wire.OP_DRAIN, "seq": extend.seq})
            return
        card = self._cards[session.card]
        try:
            grant = card.scheduler.extend(session.flexnpu_id, extend.used_us, now)
            self._record_usage(session.flexnpu_id, card.scheduler.last_charge_us(session.flexnpu_id), now)
        except UnknownTenantError:
            grant = None
        if grant is None:
            session.send({"op": wire.OP_DRAIN, "seq": session.seq})
            return
        self._hand_out(session, grant, now)

    def _end_grant(
        self,
        session: Session,
        used_us: int,
        now: int,
        ops_used: int = 0,
        *,
        grace_us: int | None = None,
        credit_us: int = 0,
        ended_us: int | None = None,
    ) -> int:
        card = self._cards[session.card]
        session.holding = False
        if card.holders.pop(session.flexnpu_id, None) is not None:
            card.ended_ns = (now if ended_us is None else ended_us) * 1000
        still_wants = bool(card.waiting.get(session.flexnpu_id))
        try:
            charged = card.scheduler.release(
                session.flexnpu_id, used_us, now, still_wants, ops_used=ops_used, grace_us=grace_us, credit_us=credit_us
            )
        except UnknownTenantError:
            return 0
        self._record_usage(session.flexnpu_id, charged, now)
        return charged

    def _record_usage(self, flexnpu_id: str, used_us: int, now: int) -> None:
        stats = self._stats.get(flexnpu_id)
        if stats is not None:
            stats.used(used_us, now)

    def _drop(self, session: Session) -> None:
        """A connection closed: its grant returns to the scheduler (charged the time held), its wish is withdrawn."""
        self._sessions.discard(session)
        if not session.flexnpu_id or session.card not in self._cards:
            return
        card = self._cards[session.card]
        queue = card.waiting.get(session.flexnpu_id)
        if queue is not None and session in queue:
            queue.remove(session)
        if session.holding:
            self._end_grant(session, 0, self._clock())
        elif session.wants and not queue and session.flexnpu_id not in card.holders:
            self._withdraw(card, session.flexnpu_id)
        session.wants = False
        if not self._stopping:
            self._decide(session.card, self._clock())

    def _withdraw(self, card: _Card, flexnpu_id: str) -> None:
        """Nobody of this tenant waits any more: tell the scheduler (a release of nothing, wanting nothing)."""
        try:
            if card.scheduler.wants(flexnpu_id):
                card.scheduler.release(flexnpu_id, 0, self._clock(), still_wants=False)
        except UnknownTenantError:
            pass

    def _decide(self, key: CardKey, now: int) -> None:
        card = self._cards.get(key)
        if card is None:
            return
        for _ in range(64):  # ops mode may grant several tenants; a vanished session makes us ask again
            decision: Decision = card.scheduler.decide(now)
            if decision.revoke is not None and self._revoke(card, decision.revoke, now):
                continue  # the holding ended at the revoke: the card is free now, whom does it go to
            card.wake_at_us = decision.wake_at_us
            if decision.grant is None:
                break
            self._grant(card, decision.grant, now)
        if not card.holders and card.published is not None and (card.ahead is None or card.ahead.at_us <= now):
            # nobody got the card next: one write says so (a hand-over is one write). A holder handed over ahead
            # keeps its grant to its deadline, which ends it by itself.
            card.published = None
            self._publish(key, None, self._grant_seq, 0)
        if not card.holders:
            card.ended_ns = 0
        if self._shm is not None:
            waiter = any(q and f not in card.holders for f, q in card.waiting.items())
            self._shm.set_contended(key, waiter and card.scheduler.yield_serves_other(now))
            preemptor = card.scheduler.preemptor(now)
            self._shm.set_preemptor(key, preemptor if preemptor in self._slot_sessions else None)
            if waiter and card.ahead is None:
                for session in list(card.holders.values()):
                    self._cut_back(session, now)
        self._poke_timer(card.wake_at_us)

    def _cut_back(self, session: Session, now: int) -> None:
        """A slot holder renewed for several slices while it was alone: now that another waits, its grant ends with
        its current slice (a new epoch, the same holder: its gate goes on), as if it had been renewed one at a time."""
        slice_us = self.policy.slice_us
        if session.conn is not None or not session.holding or session.deadline_us - now <= slice_us:
            return
        if self._cards[session.card].scheduler.outranks_waiters(session.flexnpu_id):
            return  # the waiters would not be served before it: its slices are not theirs (``quantum_slices``)
        end = session.granted_at_us + slice_us * ((now - session.granted_at_us) // slice_us + 1)
        ahead = renew_ahead_us(slice_us)
        if end - now < ahead:
            end += slice_us  # past this slice's renewal lead already: the next one
        if end >= session.deadline_us:
            return
        self._grant_seq += 1
        session.seq = self._grant_seq
        session.deadline_us = end
        session.budget_us = end - session.granted_at_us
        session.renew_at_us = end - ahead
        self._poke_timer(session.renew_at_us)
        self._publish(session.card, session.flexnpu_id, session.seq, end)

    def _grant(self, card: _Card, grant: Grant, now: int, at_us: int | None = None) -> Session | None:
        """Hand ``grant`` to its tenant's first queued session (from ``at_us``, published as the successor, when
        given); the session, or None when none queues (the scheduler is told)."""
        queue = card.waiting.get(grant.tenant_id)
        session = queue.popleft() if queue else None
        if (
            session is not None
            and session.conn is None
            and self._shm is not None
            and not self._shm.wants(session.flexnpu_id)
        ):
            # its want is gone (the card's preemptor ran its step before this daemon reacted, and synchronised):
            # a grant now would be held idle until its deadline, and charged
            session.wants = False
            session = None
        if session is None:
            card.scheduler.release(grant.tenant_id, 0, now if at_us is None else at_us, still_wants=False)
            return None
        session.wants = False
        stats = self._stats.get(grant.tenant_id)
        if stats is not None:
            stats.waited((now if at_us is None else at_us) - session.want_since_us)
        card.holders[grant.tenant_id] = session
        self._hand_out(session, grant, now, at_us)
        return session

    def _hand_out(self, session: Session, grant: Grant, now: int, at_us: int | None = None) -> None:
        """The grant, from now or (a slot's successor) from ``at_us``, when the current holding ends."""
        start = now if at_us is None else at_us
        self._grant_seq += 1
        session.seq = self._grant_seq
        session.holding = True
        session.granted_at_us = start
        session.budget_us = grant.budget_us
        end = start + grant.budget_us
        session.deadline_us = end + self._expiry_grace_us
        self._poke_timer(session.deadline_us)
        if session.conn is None:
            self._poll_within(now)  # a slot in use: read every few slices again (``_poll_slots``)
        stats = self._stats.get(grant.tenant_id)
        if stats is not None:
            stats.grants += 1
        if session.conn is None:
            session.deadline_us = end  # no release comes: the holding ends at the deadline
            ahead = renew_ahead_us(self.policy.slice_us)
            session.renew_at_us = end - ahead if grant.budget_us > ahead else None
            self._poke_timer(session.renew_at_us)
        card = self._cards[session.card]
        if at_us is not None and self._shm is not None:
            self._shm.publish_next(session.card, session.flexnpu_id, session.seq, end * 1000)
        else:
            card.published = session.flexnpu_id
            self._publish(session.card, session.flexnpu_id, session.seq, end, card.ended_ns)
            card.ended_ns = 0
        if not session.send(
            {
                "op": wire.OP_GRANT,
                "seq": session.seq,
                "budget_us": grant.budget_us,
                "ops": grant.ops,
                "inflight_us": self._run_ahead_us(session),
            }
        ):
            _hang_up(session)  # its reader thread drops it and the grant returns

    def _publish(
        self, key: CardKey, flexnpu_id: str | None, epoch: int, deadline_us: int, ended_ns: int | None = None
    ) -> None:
        """Mirror the card's grant into its shared-memory region (monotonic µs -> ns). It replaces a successor
        published ahead: that hand-over is settled now (a revoke, a removal, the card given to someone else)."""
        card = self._cards[key]
        if card.ahead is not None:
            self._settle_ahead(card)
        if self._shm is not None:
            self._shm.publish(key, flexnpu_id, epoch, deadline_us * 1000, ended_ns)

    def _run_ahead_us(self, session: Session) -> int:
        mine = self._registrations.get(session.flexnpu_id)
        if mine is None:
            return RUN_AHEAD_CONTENDED_US
        above = any(
            r.priority.rank > mine.priority.rank and (r.npu, r.chip) == session.card
            for r in self._registrations.values()
        )
        return RUN_AHEAD_CONTENDED_US if above else RUN_AHEAD_US

    def _revoke(self, card: _Card, tenant_id: str, now: int) -> bool:
        """Ask the holder to stop at its next launch; True when its holding ended here (a slot holder: the card is
        free for the next grant at once)."""
        session = card.holders.get(tenant_id)
        if session is None:
            return False
        if session.revoked_seq == session.seq:
            return False  # asked already; the scheduler repeats its wish at every decision until the holder releases
        session.revoked_seq = session.seq
        session.send({"op": wire.OP_REVOKE, "seq": session.seq})
        if session.conn is None and card.ahead is None and session.granted_at_us <= now:
            # A slot holder's grant ends now, as at a deadline: charged max(reported, held until now), undrained,
            # its last kernels the next holder's tail credit. The grant published next replaces its grant word, so
            # its gate stops at its next launch: the waiter that caused the revoke launches without waiting for a
            # second reaction of this daemon (the revoke and the grant are one write).
            session.deadline_us = now
            self._end_slot_holding(session, now)
            return True
        if session.conn is None:
            self._publish(session.card, tenant_id, session.seq, now)  # the deadline is now: stop at the next launch
            session.deadline_us = now  # and its holding ends now (charged at the timer, the next one waits its tail)
            self._poke_timer(now)
        if session.deadline_us > now + self._revoke_grace_us:
            session.deadline_us = now + self._revoke_grace_us
            self._poke_timer(session.deadline_us)
        return False

    # ----- timer ----------------------------------------------------------------------------------------------

    def _poke_timer(self, at_us: int | None) -> None:
        """Wake the timer thread only when it must run earlier than planned (saves a thread switch per grant)."""
        if at_us is not None and (self._timer_due_us is None or at_us < self._timer_due_us):
            self._timer_due_us = at_us
            self._timer_cond.notify()

    def _timer(self) -> None:
        _fine_timer_slack()  # the default 50 µs slack of a timed wait is the hand-off's delay at every deadline
        _latency_priority()
        with self._lock:
            while not self._stopping:
                self._run_due(self._clock())
                next_at = self._next_timer_us()
                self._timer_due_us = next_at
                timeout = None if next_at is None else max(0.0, (next_at - self._clock()) / 1e6)
                self._timer_cond.wait(timeout)

    def _run_due(self, now: int) -> None:
        self._poll_slots(now)
        self._promote_due(now)
        self._expire(now)
        for key, card in self._cards.items():
            if card.wake_at_us is not None and card.wake_at_us <= now:
                card.wake_at_us = None
                self._decide(key, now)

    def _expire(self, now: int) -> None:
        for key, card in self._cards.items():
            for session in list(card.holders.values()):
                if session.renew_at_us is not None and session.renew_at_us <= now < session.deadline_us:
                    session.renew_at_us = None
                    self._renew_ahead(session, now)
                    continue
                if session.holding and session.deadline_us <= now and session.conn is None:
                    self._end_slot_holding(session, now)
                    self._decide(key, now)
                elif session.holding and session.deadline_us <= now:
                    log.info("grant socket: %s held its grant past the deadline; reclaimed", session.peer.describe())
                    session.send({"op": wire.OP_REVOKE, "seq": session.seq, "expired": True})
                    self._end_grant(session, 0, now)  # charged the time it held the card
                    self._decide(key, now)

    def _promote_due(self, now: int) -> None:
        """Hand-overs decided ahead whose time came: the successor (running since the deadline, by itself) becomes
        the card region's grant; with no successor the card goes to whom the scheduler picks now, if anyone. Not a
        timer of its own: it rides on the next one (the successor's renewal lead at the latest), which saves this
        daemon a wake-up per hand-over; until then the region's successor fields say who holds the card."""
        for key, card in self._cards.items():
            ahead = card.ahead
            if ahead is None or ahead.at_us > now:
                continue
            self._settle_ahead(card)
            successor = ahead.successor
            if successor is not None and successor.holding and card.holders.get(successor.flexnpu_id) is successor:
                card.published = successor.flexnpu_id
                card.ended_ns = 0
                if self._shm is not None:
                    self._shm.promote(key)
            self._decide(key, now)

    def _next_timer_us(self) -> int | None:
        times = [c.wake_at_us for c in self._cards.values() if c.wake_at_us is not None]
        times += [s.deadline_us for c in self._cards.values() for s in c.holders.values()]
        times += [s.renew_at_us for c in self._cards.values() for s in c.holders.values() if s.renew_at_us is not None]
        if self._next_poll_us is not None:
            times.append(self._next_poll_us)
        return min(times) if times else None

    # ----- the shared-memory slots (under the lock) -----------------------------------------------------------

    def _sync_slots(self, registrations: Sequence[Registration], now: int) -> None:
        """One slot session per registration with a slot; a removed registration's session goes (and its grant)."""
        if self._shm is None:
            return
        self._shm.sync(registrations, self.policy.quota)
        keys = {r.flexnpu_id: (r.npu, r.chip) for r in registrations}
        for flexnpu_id in [
            f for f, s in self._slot_sessions.items() if not self._shm.has_slot(f) or keys.get(f) != s.card
        ]:
            self._drop(self._slot_sessions.pop(flexnpu_id))
        for registration in registrations:
            fid = registration.flexnpu_id
            if fid in self._slot_sessions or not self._shm.has_slot(fid):
                continue
            report = self._shm.report(fid)
            self._slot_sessions[fid] = Session(
                None,
                Peer(0, 0, 0, registration.pod_uid),
                flexnpu_id=fid,
                card=(registration.npu, registration.chip),
                used_ns_seen=report.used_ns if report else 0,
                excluded_ns_seen=report.excluded_ns if report else 0,
            )
        self._next_poll_us = now if self._slot_sessions else None
        self._poke_timer(self._next_poll_us)

    def _poll_within(self, now: int) -> None:
        """The slot poll runs within SLOT_POLL_SLICES of ``now`` (it waited for the sweep while no slot was in use)."""
        at = now + SLOT_POLL_SLICES * self.policy.slice_us
        if self._next_poll_us is None or self._next_poll_us > at:
            self._next_poll_us = at
            self._poke_timer(at)

    def _poll_slots(self, now: int) -> None:
        """Read the slots' want flags (those in use lately, or every slot at the sweep; see SLOT_POLL_SLICES): a new
        wish queues the slot, a withdrawn one leaves the queue."""
        if self._shm is None or not self._slot_sessions:
            self._next_poll_us = None
            return
        if self._next_poll_us is not None and now < self._next_poll_us:
            return
        slice_us = self.policy.slice_us
        running = self._bells is not None and self._bells.running
        unwatched = self._bells.unwatched() if running and self._bells is not None else frozenset()
        # the slots in use lately (an early want or a withdrawal rings nothing) and those beyond the doorbells
        recent = now - self.policy.window_us
        active = [
            s
            for f, s in self._slot_sessions.items()
            if s.holding or s.wants or s.deadline_us > recent or f in unwatched
        ]
        sessions = active
        if not running or now >= self._next_sweep_us:
            self._next_sweep_us = now + SLOT_SWEEP_SLICES * slice_us
            sessions = list(self._slot_sessions.values())
        # Polled again in a few slices while any slot is in use or beyond the doorbells, else at the sweep.
        fast = not running or bool(active)
        self._next_poll_us = now + SLOT_POLL_SLICES * slice_us if fast else self._next_sweep_us
        touched = {s.card for s in sessions if self._slot_changed(s, now)}
        for key in touched:
            self._decide(key, now)

    def _on_ring(self, flexnpu_ids: Sequence[str], woke_us: int) -> None:
        """The doorbell thread saw these slots ring (it woke at ``woke_us``): read them now (a want, a yield),
        decide for their cards. A yield ends its holding when the thread woke, not when it got the lock."""
        with self._lock:
            if self._stopping or self._shm is None:
                return
            now = self._clock()
            seen = min(now, woke_us)
            touched = set()
            for fid in flexnpu_ids:
                session = self._slot_sessions.get(fid)
                if session is not None and self._slot_changed(session, now, seen):
                    touched.add(session.card)
            for key in touched:
                self._decide(key, now)

    def _slot_changed(self, session: Session, now: int, seen: int | None = None) -> bool:
        """Apply what a slot says now (its holder gave the grant back; its want came or went): True when it did.
        ``seen``: when the daemon saw it (its doorbell thread woke), ``now`` when not given."""
        assert self._shm is not None
        fid = session.flexnpu_id
        if session.holding:
            if not self._shm.yielded(fid, session.seq):
                return False
            # Charged until the daemon saw the yield (its own clock: the pod could have used the card until it
            # rang), never before the grant began.
            self._end_slot_holding(session, max(session.granted_at_us, min(now, now if seen is None else seen)), True)
            return True
        wants = self._shm.wants(fid)
        if wants and not session.wants:
            self._want(session, now)
            return True
        if not wants and session.wants:
            self._unqueue(session)
            return True
        return False

    def _unqueue(self, session: Session) -> None:
        card = self._cards[session.card]
        queue = card.waiting.get(session.flexnpu_id)
        if queue is not None and session in queue:
            queue.remove(session)
        session.wants = False
        if not queue and session.flexnpu_id not in card.holders:
            self._withdraw(card, session.flexnpu_id)

    def _end_slot_holding(self, session: Session, now: int, yielded: bool = False) -> None:
        """A slot's grant reached its deadline: charge it, and renew it when it still wants and would be picked.

        ``yielded``: its pod gave the grant back before the deadline (nothing in flight, another tenant waits): it
        ends at ``now`` (when the daemon saw the yield), charged max(reported, held until then), and is not renewed.
        The tenant's ``yield_ns`` is not believed for the charge (it only dates the end of the holding in the card's
        ``ended_ns``, a figure).
        """
        assert self._shm is not None
        session.renew_at_us = None
        report = self._shm.usage(session.flexnpu_id)
        used_ns, wants, yield_ns = report if report else (session.used_ns_seen, False, 0)
        used_us = self._rebase_usage(session, used_ns)
        card = self._cards[session.card]
        grace = max(self.policy.charge_grace_us, SLOT_CHARGE_GRACE_US)
        credit = self._tail_credit(card, session)
        unexcused = self._unexcused_us(session, credit)
        used_us += unexcused
        # When the holding ended, for the card's ended_ns (a figure): its deadline, or its yield as the pod dates it
        ended_us = max(session.granted_at_us, min(now, yield_ns // 1000)) if yielded else session.deadline_us
        if wants and not yielded and session.revoked_seq != session.seq:  # a revoked holder queues, not renewed
            if self._extend_slot(session, card, used_ns, used_us, now, grace, credit, unexcused):
                return
            used_us = 0  # the refused extension charged it already
        session.holding = False
        if wants:
            self._enqueue(session, now)
        charged = self._end_grant(session, used_us, now, grace_us=grace, credit_us=credit, ended_us=ended_us)
        if used_us:
            session.used_ns_seen = _consumed(session.used_ns_seen, used_ns, charged, unexcused)
        card.tail_of, card.tail_credited_us = (session.flexnpu_id, used_ns), 0  # its last work may still run

    def _renew_ahead(self, session: Session, now: int) -> None:
        """Shortly before a slot grant's deadline: renewed now when its pod is using the card (a launch in the
        grant's last moments set its want, or it reported device time in this grant) and the scheduler picks it
        again (charged what it used until now). When the scheduler would not, the holding goes on to its deadline as
        granted (its use so far is charged, and the deadline charges the rest); a holder that neither wants nor used
        the card in this grant (it went idle), or was asked to stop, is left alone.

        A busy holder is usually between a synchronise and its next launch at that moment (a bursty program's host
        gap), its want withdrawn at the sync: renewed only on its want, it lost the card at the deadline and waited
        for the daemon's reaction at its next launch, gap after gap."""
        assert self._shm is not None
        report = self._shm.usage(session.flexnpu_id)
        if report is None or session.revoked_seq == session.seq:
            return
        used_ns, wants = report[0], report[1]
        card = self._cards[session.card]
        grace = max(self.policy.charge_grace_us, SLOT_CHARGE_GRACE_US)
        if wants or used_ns > session.used_ns_seen:
            used_us = self._rebase_usage(session, used_ns)
            credit = self._tail_credit(card, session)
            unexcused = self._unexcused_us(session, credit)
            if self._extend_slot(session, card, used_ns, used_us + unexcused, now, grace, credit, unexcused):
                return
        if self.policy.mode == "share" and card.ahead is None and card.scheduler.yield_serves_other(now, wants):
            self._hand_over_ahead(session, card, now, grace)

    def _hand_over_ahead(self, session: Session, card: _Card, now: int, grace: int) -> None:
        """The holder is not renewed and another tenant would be served after it: decide now what its deadline
        brings, and publish it as the card region's next grant. Charged as at its deadline (max(reported, held until
        then)), it leaves the scheduler; the successor's grant begins at that deadline, and its tenant, waiting on the
        region until then, launches from there by itself: the hand-off no longer waits for this daemon to wake up,
        decide and write at the deadline (promoting the successor later, off the tenant's path, is the timer's)."""
        assert self._shm is not None
        at = session.deadline_us
        report = self._shm.usage(session.flexnpu_id)
        used_ns, wants = (report[0], report[1]) if report else (session.used_ns_seen, False)
        used_us = self._rebase_usage(session, used_ns)
        credit = self._tail_credit(card, session)
        unexcused = self._unexcused_us(session, credit)
        used_us += unexcused
        session.renew_at_us = None
        session.holding = False
        if wants:
            self._enqueue(session, now)
        charged = self._end_grant(session, used_us, at, grace_us=grace, credit_us=credit, ended_us=at)
        card.ahead = _Ahead(session, None, at, charged, unexcused)
        decision = card.scheduler.decide(at)
        if decision.grant is not None:
            card.ahead.successor = self._grant(card, decision.grant, now, at_us=at)
        card.wake_at_us = decision.wake_at_us
        self._decide(session.card, now)  # the successor's revoke, the card's contended word, the next wake-up

    def _settle_ahead(self, card: _Card) -> None:
        """The former holder's side of a hand-over decided ahead, once it is over (or replaced): its usage until now
        is what its charge covered (the carry starts from here), and its work after that is the card's tail,
        credited to the next holder. The hand-over is forgotten."""
        ahead, card.ahead = card.ahead, None
        if ahead is None or self._shm is None:
            return
        former = ahead.former
        report = self._shm.usage(former.flexnpu_id)
        if report is None or self._slot_sessions.get(former.flexnpu_id) is not former:
            return
        former.used_ns_seen = _consumed(former.used_ns_seen, report[0], ahead.charged_us, ahead.unexcused_us)
        card.tail_of, card.tail_credited_us = (former.flexnpu_id, report[0]), 0

    def _rebase_usage(self, session: Session, used_ns: int) -> int:
        """The device time a slot reports since its last charge (µs). A counter that went backwards is re-based
        (it charged nothing meanwhile); a backlog past one window is a lie, of which one window is kept."""
        session.used_ns_seen = max(min(session.used_ns_seen, used_ns), used_ns - self.policy.window_us * 1000)
        return usage_delta_us(session.used_ns_seen, used_ns)

    def _extend_slot(
        self,
        session: Session,
        card: _Card,
        used_ns: int,
        used_us: int,
        now: int,
        grace: int,
        credit: int,
        unexcused: int = 0,
    ) -> bool:
        """Charge a slot holder its use so far and renew its grant when the scheduler picks it again (True); for
        ``LONE_SLICES`` when nobody else waits."""
        alone = not any(queue and fid != session.flexnpu_id for fid, queue in card.waiting.items())
        try:
            grant = card.scheduler.extend(
                session.flexnpu_id,
                used_us,
                now,
                grace_us=grace,
                credit_us=credit,
                slices=LONE_SLICES if alone else card.scheduler.quantum_slices(session.flexnpu_id, LONE_SLICES),
            )
            charged = card.scheduler.last_charge_us(session.flexnpu_id)
            self._record_usage(session.flexnpu_id, charged, now)
        except UnknownTenantError:
            grant, charged = None, used_us
        session.used_ns_seen = _consumed(session.used_ns_seen, used_ns, charged, unexcused)
        if grant is None:
            return False
        self._hand_out(session, grant, now)
        return True

    def _unexcused_us(self, session: Session, credit_us: int) -> int:
        """What the slot's timing left out as another holder's since its last charge (``excluded_ns``) and the
        tails credited to its holdings (``credit_us`` now, and those before) do not account for: its own device
        time, charged with its report. A pod whose first launch in a grant is a long kernel of its own leaves it
        out of used_ns as it would another's tail: this charges it all the same."""
        assert self._shm is not None
        excluded_ns = self._shm.excluded(session.flexnpu_id)
        if excluded_ns < session.excluded_ns_seen:  # the counter went backwards (a pod's write): re-based
            session.excluded_ns_seen = excluded_ns
        excluded_us = usage_delta_us(session.excluded_ns_seen, excluded_ns)
        session.excluded_ns_seen = excluded_ns
        unexcused, session.tail_allowance_us = unexcused_us(excluded_us, session.tail_allowance_us + credit_us)
        return unexcused

    def _tail_credit(self, card: _Card, session: Session) -> int:
        """What the card ran of the former holder's work since its deadline and is not yet credited (µs)."""
        assert self._shm is not None
        if card.tail_of is None or card.tail_of[0] == session.flexnpu_id:
            return 0
        report = self._shm.usage(card.tail_of[0])
        if report is None:
            card.tail_of = None
            return 0
        tail = min(usage_delta_us(card.tail_of[1], report[0]), MAX_TAIL_US)
        credit = max(0, tail - card.tail_credited_us)
        card.tail_credited_us += credit
        return credit


def _fine_timer_slack() -> None:
    """1 ns of timer slack for the calling thread (Linux prctl PR_SET_TIMERSLACK); nothing elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)


def _latency_priority() -> None:
    """Nice -10 for the calling thread when the daemon may (CAP_SYS_NICE, as a node daemon has): the grant threads
    wake up to hand the card on, and every microsecond a runnable one waits for a CPU the card idles."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)


def unexcused_us(excluded_us: int, allowance_us: int) -> tuple[int, int]:
    """(the part of ``excluded_us`` that the tails in ``allowance_us`` do not excuse, the allowance left) (pure).

    The allowance is what other holders' tails ran in a slot's holdings (their reports after their deadlines);
    what is left of it is kept up to ``MAX_TAIL_US`` (its report of such a holding may come with a later charge)."""
    allowance = max(0, allowance_us)
    excused = min(max(0, excluded_us), allowance)
    return max(0, excluded_us) - excused, min(allowance - excused, MAX_TAIL_US)


def _consumed(seen_ns: int, used_ns: int, charged_us: int, unexcused_us: int = 0) -> int:
    """A slot's ``used_ns_seen`` after a charge: the reported usage it covered is consumed, the rest is carried.

    The charge covers the unexcused time it added first (``unexcused_us``, which no counter carries to a later
    charge), then the report: a charge capped below both leaves the report's rest for the next one."""
    return min(used_ns, seen_ns + max(0, charged_us - max(0, unexcused_us)) * 1000)


def _welcome(registration: Registration, policy: SlicePolicy) -> Message:
    return {
        "op": wire.OP_WELCOME,
        "share": registration.aicore_alloc / policy.quota,
        "priority": registration.priority.value,
        "slice_us": policy.slice_us,
        "memory_mib": registration.memory_alloc,
        "mode": policy.mode,
    }


def _hang_up(session: Session) -> None:
    if session.conn is not None:
        shutdown(session.conn.sock)


def _refuse_busy(sock: socket.socket, reason: str) -> None:
    sock.send(wire.encode({"op": wire.OP_ERROR, "code": wire.ERR_BUSY, "message": reason}))
