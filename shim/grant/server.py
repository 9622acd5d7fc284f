"""The grant server inside flexnpud: the unix socket through which in-pod runtimes ask for and return slices.

It drives one pure ``CardScheduler`` per card with the monotonic clock, and only translates: a runtime's
``want`` / ``release`` / ``extend`` become scheduler events, the scheduler's decisions become ``grant`` and
``revoke`` messages. Wire: newline-delimited JSON (``flexnpu.shim.runtime.wire``). Each connection has one reader
thread; a timer thread calls ``decide`` at the scheduler's ``wake_at`` and reclaims grants whose holder went
silent (a process that stopped launching while holding the card, or ignored a revoke).

Messages (client -> server): ``hello {id}``, ``want``, ``release {seq, used_us, want, ops_used}``,
``extend {seq, used_us}``, ``ping``. Server -> client: ``welcome {share, priority, slice_us, memory_mib}``,
``grant {seq, budget_us, ops, inflight_us}``, ``drain {seq}`` (extend refused: drain, release),
``revoke {seq}``, ``error {code, message}`` (then the server closes), ``pong``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flexnpu.cards import Card
from flexnpu.registration import Registration
from flexnpu.shim.core.slicing import CardScheduler, Decision, Grant, SlicePolicy, Tenant, UnknownTenantError
from flexnpu.shim.grant.identity import IdentityError, Peer, check_peer, peer_of
from flexnpu.shim.grant.stats import TenantStats
from flexnpu.shim.runtime import wire
from flexnpu.shim.runtime.wire import LineSocket, Message, WireError

log = logging.getLogger(__name__)

# A holder that neither releases nor extends this long after its budget ran out loses the grant.
EXPIRY_GRACE_US = 20_000
# A revoked holder that does not release within this long loses the grant (it stopped launching: idle).
REVOKE_GRACE_US = 10_000

# Run-ahead the runtime may queue on the device (the wait it can impose on a revoke): generous when nobody of a
# higher priority shares the card (keeps a lone tenant at native throughput), short when someone does.
RUN_AHEAD_US = 2000
RUN_AHEAD_CONTENDED_US = 500

CardKey = tuple[int, int]


class GrantRefused(Exception):
    """A hello the server refuses: carries the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class Session:
    """One connected runtime bound to one registration."""

    conn: LineSocket
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

    def send(self, message: Message) -> bool:
        """Send without blocking; False when the peer is gone or does not read (the session is then dropped)."""
        try:
            self.conn.sock.send(wire.encode(message), socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True


@dataclass
class _Card:
    scheduler: CardScheduler
    waiting: dict[str, deque[Session]] = field(default_factory=dict)
    holders: dict[str, Session] = field(default_factory=dict)
    wake_at_us: int | None = None


def _now_us() -> int:
    return time.monotonic_ns() // 1000


class GrantServer:
    """Serves grants for the registrations of ``cards`` on ``socket_path`` (see the module docstring)."""

    def __init__(self, socket_path: str, policy: SlicePolicy, cards: Sequence[Card], *,
                 proc_root: str | os.PathLike[str] = "/proc", clock_us: Callable[[], int] = _now_us,
                 expiry_grace_us: int = EXPIRY_GRACE_US, revoke_grace_us: int = REVOKE_GRACE_US) -> None:
        self.socket_path = socket_path
        self.policy = policy
        self._proc_root = Path(proc_root)
        self._clock = clock_us
        self._expiry_grace_us = expiry_grace_us
        self._revoke_grace_us = revoke_grace_us
        self._cards = {(c.index, c.chip): _Card(CardScheduler(policy)) for c in cards}
        self._registrations: dict[str, Registration] = {}
        self._sessions: set[Session] = set()
        self._stats: dict[str, TenantStats] = {}
        self._lock = threading.Lock()
        self._timer_cond = threading.Condition(self._lock)
        self._stopping = False
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._grant_seq = 0
        self._timer_due_us: int | None = None

    # ----- the API flexnpud uses ------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the socket (replacing a stale one) and serve in background threads."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o666)  # pods run as any uid; identity comes from the peer's cgroup
        listener.listen(128)
        self._listener = listener
        self._spawn(self._accept, "grant-accept")
        self._spawn(self._timer, "grant-timer")

    def set_registrations(self, registrations: Sequence[Registration]) -> None:
        """The full current set of registrations; sessions of removed ones are told and closed."""
        with self._lock:
            self._registrations = {r.flexnpu_id: r for r in registrations}
            now = self._clock()
            for key, card in self._cards.items():
                tenants = [Tenant(r.flexnpu_id, r.aicore_alloc, r.priority) for r in registrations
                           if (r.npu, r.chip) == key]
                card.scheduler.set_tenants(tenants, now)
                for tenant in tenants:
                    self._stats.setdefault(tenant.tenant_id, TenantStats(now))
            for flexnpu_id in list(self._stats):
                if flexnpu_id not in self._registrations:
                    del self._stats[flexnpu_id]
            for session in list(self._sessions):
                if session.flexnpu_id and session.flexnpu_id not in self._registrations:
                    self._refuse_later(session, wire.ERR_UNREGISTERED,
                                       f"registration {session.flexnpu_id!r} was removed")
            for key in self._cards:
                self._decide(key, now)

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        """Live figures by flexnpu_id: device_time_us, grants, wait_p99_us, achieved_share."""
        with self._lock:
            now = self._clock()
            return {fid: s.figures(now) for fid, s in self._stats.items()}

    def stop(self) -> None:
        """Stop serving, close every session and remove the socket."""
        with self._lock:
            self._stopping = True
            self._timer_cond.notify_all()
            sessions = list(self._sessions)
        if self._listener is not None:
            _shutdown(self._listener)
            self._listener.close()
        for session in sessions:
            _shutdown(session.conn.sock)
        for thread in self._threads:
            thread.join(timeout=5)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> GrantServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- connections ----------------------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            try:
                peer = peer_of(sock, self._proc_root)
            except OSError:
                sock.close()
                continue
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                session = Session(LineSocket(sock), peer)
                self._sessions.add(session)
            self._spawn(self._serve, "grant-conn", session)

    def _serve(self, session: Session) -> None:
        try:
            self._hello(session, session.conn.receive())
            while True:
                message = session.conn.receive()
                with self._lock:
                    if self._stopping:
                        return
                    self._handle(session, message)
        except GrantRefused as exc:
            session.send({"op": wire.OP_ERROR, "code": exc.code, "message": str(exc)})
        except WireError:
            pass
        finally:
            with self._lock:
                self._drop(session)
            session.conn.close()

    def _hello(self, session: Session, message: Message) -> None:
        if message.get("op") != wire.OP_HELLO:
            raise GrantRefused(wire.ERR_PROTOCOL, "the first message must be 'hello'")
        flexnpu_id = str(message.get("id", ""))
        with self._lock:
            registration = self._registrations.get(flexnpu_id) or self._of_pod(session.peer.pod_uid)
            if registration is not None:
                flexnpu_id = registration.flexnpu_id
            if registration is None or (registration.npu, registration.chip) not in self._cards:
                raise GrantRefused(wire.ERR_UNKNOWN_REGISTRATION,
                                   f"no registration {flexnpu_id!r} on this node's cards (register it first: "
                                   f"POST /device/register or a VNpuClaim)")
            try:
                check_peer(session.peer, flexnpu_id, registration.pod_uid)
            except IdentityError as exc:
                log.warning("grant socket: refused %s: %s", session.peer.describe(), exc)
                raise GrantRefused(wire.ERR_IDENTITY_MISMATCH, str(exc)) from exc
            session.flexnpu_id = flexnpu_id
            session.card = (registration.npu, registration.chip)
            share = registration.aicore_alloc / self.policy.quota
            session.send({"op": wire.OP_WELCOME, "share": share, "priority": registration.priority.value,
                          "slice_us": self.policy.slice_us, "memory_mib": registration.memory_alloc,
                          "mode": self.policy.mode})

    def _of_pod(self, pod_uid: str) -> Registration | None:
        """The one registration made for the peer's pod (Allocate names the pod; the operator names the claim)."""
        if not pod_uid:
            return None
        mine = [r for r in self._registrations.values() if r.pod_uid == pod_uid]
        return mine[0] if len(mine) == 1 else None

    def _handle(self, session: Session, message: Message) -> None:
        op = message.get("op")
        now = self._clock()
        if op == wire.OP_WANT:
            self._want(session, now)
        elif op == wire.OP_RELEASE:
            self._release(session, message, now)
        elif op == "extend":
            self._extend(session, message, now)
        elif op == wire.OP_PING:
            session.send({"op": wire.OP_PONG})
            return  # nothing changed for the scheduler
        else:
            self._refuse_later(session, wire.ERR_PROTOCOL, f"unknown op {op!r}")
            return
        self._decide(session.card, now)

    def _refuse_later(self, session: Session, code: str, text: str) -> None:
        session.send({"op": wire.OP_ERROR, "code": code, "message": text})
        _shutdown(session.conn.sock)  # the reader thread wakes up and drops the session

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

    def _release(self, session: Session, message: Message, now: int) -> None:
        wants_again = bool(message.get("want"))
        if session.holding and message.get("seq") == session.seq:
            session.holding = False
            if wants_again:
                self._enqueue(session, now)  # before the release, so the scheduler hears still_wants=True
            self._end_grant(session, _int(message, "used_us"), now, _int(message, "ops_used"))
        elif wants_again:
            self._want(session, now)

    def _extend(self, session: Session, message: Message, now: int) -> None:
        if not session.holding or message.get("seq") != session.seq:
            session.send({"op": "drain", "seq": message.get("seq")})
            return
        used = _int(message, "used_us")
        card = self._cards[session.card]
        try:
            grant = card.scheduler.extend(session.flexnpu_id, used, now)
        except UnknownTenantError:
            grant = None
        self._record_usage(session.flexnpu_id, used, now)  # charged by the scheduler either way
        if grant is None:
            session.send({"op": "drain", "seq": session.seq})
            return
        self._hand_out(session, grant, now)

    def _end_grant(self, session: Session, used_us: int, now: int, ops_used: int = 0) -> None:
        card = self._cards[session.card]
        session.holding = False
        card.holders.pop(session.flexnpu_id, None)
        still_wants = bool(card.waiting.get(session.flexnpu_id))
        try:
            card.scheduler.release(session.flexnpu_id, used_us, now, still_wants, ops_used=ops_used)
        except UnknownTenantError:
            return
        self._record_usage(session.flexnpu_id, used_us, now)

    def _record_usage(self, flexnpu_id: str, used_us: int, now: int) -> None:
        stats = self._stats.get(flexnpu_id)
        if stats is not None:
            stats.used(used_us, now)

    def _drop(self, session: Session) -> None:
        """A connection closed: its grant returns to the scheduler, its wish is withdrawn."""
        self._sessions.discard(session)
        if not session.flexnpu_id or session.card not in self._cards:
            return
        card = self._cards[session.card]
        queue = card.waiting.get(session.flexnpu_id)
        if queue is not None and session in queue:
            queue.remove(session)
        if session.holding:
            now = self._clock()
            self._end_grant(session, min(now - session.granted_at_us, session.budget_us), now)
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
            if decision.revoke is not None:
                self._revoke(card, decision.revoke, now)
            card.wake_at_us = decision.wake_at_us
            if decision.grant is None:
                break
            self._grant(card, decision.grant, now)
        self._poke_timer(card.wake_at_us)

    def _grant(self, card: _Card, grant: Grant, now: int) -> None:
        queue = card.waiting.get(grant.tenant_id)
        session = queue.popleft() if queue else None
        if session is None:
            card.scheduler.release(grant.tenant_id, 0, now, still_wants=False)
            return
        session.wants = False
        stats = self._stats.get(grant.tenant_id)
        if stats is not None:
            stats.waited(now - session.want_since_us)
        card.holders[grant.tenant_id] = session
        self._hand_out(session, grant, now)

    def _hand_out(self, session: Session, grant: Grant, now: int) -> None:
        self._grant_seq += 1
        session.seq = self._grant_seq
        session.holding = True
        session.granted_at_us = now
        session.budget_us = grant.budget_us
        session.deadline_us = now + grant.budget_us + self._expiry_grace_us
        self._poke_timer(session.deadline_us)
        stats = self._stats.get(grant.tenant_id)
        if stats is not None:
            stats.grants += 1
        if not session.send({"op": wire.OP_GRANT, "seq": session.seq, "budget_us": grant.budget_us,
                             "ops": grant.ops, "inflight_us": self._run_ahead_us(session)}):
            _shutdown(session.conn.sock)

    def _run_ahead_us(self, session: Session) -> int:
        mine = self._registrations.get(session.flexnpu_id)
        if mine is None:
            return RUN_AHEAD_CONTENDED_US
        above = any(r.priority.rank > mine.priority.rank and (r.npu, r.chip) == session.card
                    for r in self._registrations.values())
        return RUN_AHEAD_CONTENDED_US if above else RUN_AHEAD_US

    def _revoke(self, card: _Card, tenant_id: str, now: int) -> None:
        session = card.holders.get(tenant_id)
        if session is None:
            return
        if session.revoked_seq == session.seq:
            return  # asked already; the scheduler repeats its wish at every decision until the holder releases
        session.revoked_seq = session.seq
        session.send({"op": wire.OP_REVOKE, "seq": session.seq})
        if session.deadline_us > now + self._revoke_grace_us:
            session.deadline_us = now + self._revoke_grace_us
            self._poke_timer(session.deadline_us)

    # ----- timer ----------------------------------------------------------------------------------------------

    def _poke_timer(self, at_us: int | None) -> None:
        """Wake the timer thread only when it must run earlier than planned (saves a thread switch per grant)."""
        if at_us is not None and (self._timer_due_us is None or at_us < self._timer_due_us):
            self._timer_due_us = at_us
            self._timer_cond.notify()

    def _timer(self) -> None:
        with self._lock:
            while not self._stopping:
                now = self._clock()
                self._expire(now)
                for key, card in self._cards.items():
                    if card.wake_at_us is not None and card.wake_at_us <= now:
                        card.wake_at_us = None
                        self._decide(key, now)
                next_at = self._next_timer_us()
                self._timer_due_us = next_at
                timeout = None if next_at is None else max(0.0, (next_at - self._clock()) / 1e6)
                self._timer_cond.wait(timeout)

    def _expire(self, now: int) -> None:
        for key, card in self._cards.items():
            for session in list(card.holders.values()):
                if session.holding and session.deadline_us <= now:
                    log.info("grant socket: %s held its grant past the deadline; reclaimed", session.peer.describe())
                    session.send({"op": wire.OP_REVOKE, "seq": session.seq, "expired": True})
                    self._end_grant(session, session.budget_us, now)
                    self._decide(key, now)

    def _next_timer_us(self) -> int | None:
        times = [c.wake_at_us for c in self._cards.values() if c.wake_at_us is not None]
        times += [s.deadline_us for c in self._cards.values() for s in c.holders.values()]
        return min(times) if times else None


def _int(message: Message, key: str) -> int:
    value = message.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
