"""The slice scheduler of one card: who may use the device now, for how long, and who must stop.

flexnpud keeps one ``CardScheduler`` per card; the grant server (real time) and ``flexnpu.shim.core.virtual``
(virtual time) drive the same object, so the figures of the virtual-time benchmarks are those of the real code.
Everything here is pure: time is an ``int`` of microseconds passed in by the caller, which must not go backwards
(an earlier ``now_us`` is treated as the latest one seen); no clock, thread or I/O.

Public API (stable names; things may be added):

- ``SlicePolicy``: frozen settings of the scheduler, validated on construction (``ConfigError`` names the key).
- ``Tenant(tenant_id, aicore_alloc, priority)``: one registration on the card.
- ``Grant(tenant_id, budget_us, ops)``: the tenant may launch work for ``budget_us`` of device time from now
  (``ops`` = how many operators it may dispatch, ``None`` in ``share`` mode).
- ``Decision(grant, revoke, wake_at_us)``: grant to hand out now (or None), tenant to ask to stop at its next
  launch boundary (or None), and when to call ``decide`` again at the latest (or None: on the next event).
- ``CardScheduler(policy, tenants=())`` with ``set_tenants``, ``want``, ``release``, ``extend``, ``decide``,
  ``holders``, ``owed_us`` (alias ``tokens_us``), ``rate``, ``wants`` and ``last_charge_us`` (introspection for
  metrics).
- ``charge_us(reported_us, held_us, grace_us)``: what one holding costs (see Charging below).

Protocol for a caller: call ``want`` when a tenant has work queued, ``release`` when its grant ended (budget
spent or revoked; after draining its in-flight work; ``used_us`` = device time it consumed, measured by the
runtime), and after every event call ``decide(now)`` until it returns no grant (``share`` mode hands out one grant
at a time, so the loop ends after one; ``ops`` mode may grant several tenants at once). Deliver ``revoke`` to
that tenant's runtime; it stops launching, drains and releases. Call ``decide`` again at ``wake_at_us``.

Semantics (DESIGN.md sections 3 and 6), ``share`` mode:

- A tenant's rate is ``aicore_alloc / max(quota, busy sum)`` (busy sum = sum of ``aicore_alloc`` over the
  tenants that want or hold the card, so with oversubscription the values act as weights). Shares are kept in a
  bucket per tenant: it fills at the tenant's rate, to at most its share of a quarter of ``window_us`` (default
  1 s: 75 ms for 3 units of 10) and at least two slices; each release (and extension) takes the device time it
  charges out of it, down to a debt of a whole window's share. A tenant is *entitled* while its bucket holds more
  than its typical overrun (below). The rule before it, a sliding window of charges, gave a capped tenant its time
  back when its burst left the window, all at once, so the burst came back every window: in flexnpud's 2:8 the
  2-unit tenant had 75% of the card, then 0%, in stretches of 300 and 700 ms (29 pp of error over 100 ms windows,
  5 pp with the bucket).
- A holding ends after its budget by the work still in flight (the last kernel cannot be cut). The scheduler
  learns each tenant's typical overrun (a running mean over its last holdings) and counts it against what the
  tenant is owed, so a tenant at its cap is let in only when the overrun fits; if nobody is owed more than its
  overrun, those still under their share are served anyway rather than idling the card.
- Entitled tenants are served first: higher priority first, then by weighted fair queueing, the least device time
  charged per unit of ``aicore_alloc`` first (a tenant back from idle is brought up to within ``LAG_SLICES``
  slices of the least of the others), so that tenants interleave by weight, slice by slice. Served by what their
  buckets held instead, a tenant that could not use its share (host gaps) sat on a full bucket and came first
  until the other's bucket was full too, which made the bursts again. A grant lasts ``slice_us``, shortened to what
  the tenant's bucket still holds (but not below a quarter slice) so that a cap is not overshot.
- ``share_in_idle=false``: nobody else is served, the card idles (hard cap): over any interval of ``T`` a tenant
  uses at most ``rate * T`` plus its bucket's depth, one slice and the in-flight work it drains. ``wake_at_us``
  says when the first waiting tenant becomes entitled again. A tenant whose rate is the whole card (alone in the
  busy set, its ``aicore_alloc`` filling the quota) is never capped: there is nothing to cap. A tenant that was
  idle may burst at the full card until its bucket is empty (what a bursty latency-critical tenant needs), and is
  paced at its rate after that.
- ``share_in_idle=true``: when no waiting tenant is entitled, the card goes to the backlogged anyway (a *bonus*
  grant, not charged to the bucket, so it never costs a later guarantee): higher priority first, then by
  weighted fair queueing over ``aicore_alloc`` among equals, so idle time is shared by weight inside the highest
  busy priority level.
- Revoke: the holder is asked to stop at its next launch boundary when a waiting tenant of higher priority is
  entitled, or when the holder runs on a bonus grant. A guaranteed share is never cut for a bonus.
- Refinement: ``extend(tenant, used_us, now)`` renews the holder's grant without a drain when the scheduler would
  pick it again anyway (nobody else entitled or of higher priority waits); the runtime calls it when its budget
  runs out, and drains and releases only when it returns None. This is what keeps one busy tenant at native
  throughput. While others want the card, a renewal may last ``quantum_slices`` slices: the holder's weight over
  the others' together (2:8: the 8 renews for four slices, the 2 for one), still no more than it is owed; a round
  then gives each busy tenant about its share in one piece, with a fifth of the decisions for the larger one. A
  holder of higher priority than every waiter renews for the caller's bound: the waiters would not be served before
  it anyway, and each slice boundary was a renewal that a latency-critical step waited for with its queue drained.

Charging: usage is reported by the tenant, so it is hostile. Each ``extend`` and ``release`` of a holder is charged
``max(reported, held)`` where ``held`` is the time since the grant (or since the last extension), and at most
``held + policy.charge_grace_us``: a tenant that reports ``used_us: 0`` pays for the time it kept the card from
the others, one that reports more than it could have used (or a non-finite number) pays the bounded maximum. A
release by a tenant that holds nothing (a withdrawn wish) is charged nothing.

Yield: on the shared-memory path a holder with nothing in flight may give its grant back before its deadline
while another tenant waits (flexnpu.shim.grant.shm). The caller then calls ``release`` with ``now_us`` = when it saw
the yield (its own clock, never the tenant's), so the holder is charged ``max(reported, held until the yield was
seen)``, as for any release: the tenant's own timestamp of its yield is not believed for the charge, so a hostile
tenant shaves nothing off it (at worst an honest one pays the daemon's reaction time, which the daemon keeps short
by stamping the moment it woke, before any lock). A yield ends the holding; the tenant is not renewed and queues
again with its next want.

Hand-off: on the shared-memory path a grant ends at its deadline without a drain, so the card may still run the
former holder's last work (one non-preemptive engine) while the next holder's clock runs. The caller measures
that tail (the former holder's reported usage after its deadline) and passes it as ``credit_us`` to the next
holder's charge, which it then comes off (at most the time held; never below zero): the next holder's time held
ran it, and so may its event-measured report (an event recorded on an idle stream is stamped when recorded, before
the card gets to the stream's first kernel). The former holder pays it when its report arrives (``grace_us`` lets
one charge exceed the time held by its undrained work). Under-reporting still gains nothing alone; two colluding
tenants can only move a charge from one to the other.

``ops`` mode (the seed's policy, kept for comparison): each round of ``ticker_interval_us`` every tenant may
dispatch ``aicore_alloc`` operators; several tenants hold grants at once and their work interleaves on the device.
A grant's budget runs to the end of the round; ``release(..., ops_used=n)`` reports the dispatched operators.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from flexnpu.errors import ConfigError, FlexnpuError
from flexnpu.priority import Priority

Mode = Literal["share", "ops"]
BURST_OF_WINDOW = 4  # a bucket holds a tenant's share of window_us / 4 (250 ms at the default 1 s)
LAG_SLICES = 4  # how far behind the others a tenant back from idle may stay in the fair queueing, in slices
MODES: tuple[Mode, ...] = ("share", "ops")


class UnknownTenantError(FlexnpuError, KeyError):
    """A tenant id the scheduler does not know (never registered on this card, or removed)."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        super().__init__(f"tenant {tenant_id!r} is not registered on this card")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class SlicePolicy:
    """How one card is shared; built by flexnpud from its INI config (key names in the errors)."""

    quota: int = 10
    """``[ticker] quota``: the units of one card (a tenant's share is ``aicore_alloc / quota``)."""
    share_in_idle: bool = False
    """``[flexnpu] share_in_idle``: false = hard cap at the share, true = idle time to the backlogged."""
    slice_us: int = 2000
    """``[flexnpu] schedule_cycle``: the length of one grant, microseconds."""
    mode: Mode = "share"
    """``share`` (device-time shares) or ``ops`` (the seed's operator counting)."""
    ticker_interval_us: int = 10000
    """``[ticker] ticker_interval``: the round of the ``ops`` mode, microseconds."""
    oversubscription: float = 1.0
    """Factor f >= 1: shares may sum to f * quota and then act as weights."""
    window_us: int = 1_000_000
    """The horizon of the shares, microseconds: a tenant's bucket holds its share of a quarter of it (what it may
    burst at the full card after an idle time), and a debt of at most its share of all of it."""
    charge_grace_us: int = 1000
    """How much more than it held the grant a holder may be charged when it reports more (clock skew between the
    runtime's measurement and the daemon's); a report past it is clamped, microseconds."""

    def __post_init__(self) -> None:
        _check_int("[ticker] quota", self.quota, 1, 1000)
        _check_int("[flexnpu] schedule_cycle", self.slice_us, 50, 10_000_000)
        _check_int("[ticker] ticker_interval", self.ticker_interval_us, 100, 100_000_000)
        if not isinstance(self.share_in_idle, bool):
            raise ConfigError("[flexnpu] share_in_idle", self.share_in_idle, "must be true or false")
        if self.mode not in MODES:
            raise ConfigError("mode", self.mode, f"must be one of {', '.join(MODES)}")
        f = self.oversubscription
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or not 1.0 <= f <= 100.0:
            raise ConfigError("oversubscription", f, "must be a number from 1 to 100")
        _check_int("window_us", self.window_us, 2 * self.slice_us, 3_600_000_000)
        _check_int("charge_grace_us", self.charge_grace_us, 0, 10_000_000)


def charge_us(reported_us: object, held_us: int, grace_us: int) -> int:
    """What a holding of ``held_us`` costs when the holder reports ``reported_us`` of device time.

    ``max(reported, held)``, clamped to ``held + grace``: under-reporting gains nothing, over-reporting is bounded,
    and anything that is not a finite number counts as no report (the holder pays the time it held the card).
    """
    held = max(0, held_us)
    reported = _finite_us(reported_us)
    return min(max(reported, held), held + max(0, grace_us))


def _finite_us(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float):
        if not math.isfinite(value):
            return 0
        value = int(min(value, 2.0**62))
    return max(0, min(value, 1 << 62))


def _check_int(key: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, value, f"must be an integer from {low} to {high}")


@dataclass(frozen=True)
class Tenant:
    """One registration on the card."""

    tenant_id: str
    aicore_alloc: int
    priority: Priority = Priority.NORMAL

    def __post_init__(self) -> None:
        if not self.tenant_id:
            raise ConfigError("flexnpu_id", self.tenant_id, "must not be empty")
        if isinstance(self.aicore_alloc, bool) or not isinstance(self.aicore_alloc, int) or self.aicore_alloc < 1:
            raise ConfigError("aicore_alloc", self.aicore_alloc, "must be a positive integer")


@dataclass(frozen=True)
class Grant:
    """``tenant_id`` may launch work for ``budget_us`` of device time (and ``ops`` operators in ``ops`` mode)."""

    tenant_id: str
    budget_us: int
    ops: int | None = None


@dataclass(frozen=True)
class Decision:
    """What the caller must do now: hand out ``grant``, ask ``revoke`` to stop, call again at ``wake_at_us``."""

    grant: Grant | None = None
    revoke: str | None = None
    wake_at_us: int | None = None


@dataclass
class _State:
    tenant: Tenant
    credit: float = math.inf  # the bucket: device time it may still use (inf until first filled: a full bucket)
    wants: bool = False
    vtime: float = 0.0  # device time used per unit of aicore_alloc: the weighted fair queueing of the card
    ops_left: int = 0
    bonus: bool = False  # the current grant was handed out of idle time, not charged to the bucket
    grant_round: int = -1  # ops mode: the round of the current grant, whose ops are reserved at grant time
    granted_ops: int = 0
    budget_given: int = 0  # share mode: budget handed out in the current holding (grant plus extensions)
    budget_used: int = 0  # device time charged in the current holding
    overrun_us: float = 0.0  # typical device time used past a holding's budget (in-flight work, the last kernel)
    held_since: int = 0  # when the current holding (or its last extension) began: what the next charge covers
    last_charge: int = 0  # what the last extend or release was charged

    @property
    def rank(self) -> int:
        return self.tenant.priority.rank

    @property
    def weight(self) -> int:
        return self.tenant.aicore_alloc


class CardScheduler:
    """The slice scheduler of one card (see the module docstring for protocol and semantics)."""

    def __init__(self, policy: SlicePolicy, tenants: Iterable[Tenant] = ()) -> None:
        self.policy = policy
        self._states: dict[str, _State] = {}
        self._holders: set[str] = set()
        self._now = 0
        self._round = -1
        self.set_tenants(tenants, 0)

    # ----- events -------------------------------------------------------------------------------------------

    def set_tenants(self, tenants: Iterable[Tenant], now_us: int) -> None:
        """Replace the tenant set; known tenants keep their state, removed holders lose their grant."""
        self._advance(now_us)
        wanted = {t.tenant_id: t for t in tenants}
        for tenant_id in list(self._states):
            if tenant_id not in wanted:
                del self._states[tenant_id]
                self._holders.discard(tenant_id)
        for tenant_id, tenant in wanted.items():
            state = self._states.get(tenant_id)
            if state is None:
                self._states[tenant_id] = _State(tenant, vtime=self._min_vtime(), ops_left=tenant.aicore_alloc)
            else:
                state.tenant = tenant

    def want(self, tenant_id: str, now_us: int) -> None:
        """``tenant_id`` has work queued and asks for the device."""
        self._advance(now_us)
        state = self._state(tenant_id)
        if not state.wants and tenant_id not in self._holders:
            # A tenant back from idle must not claim the fair-queueing time it did not use meanwhile, but one back
            # from a host gap keeps what it was behind, up to LAG_SLICES slices: brought up to the others each time,
            # a bursty tenant lost its turns at every synchronise (flexnpu demo's batch split, registered 2:8, was
            # 0.234 / 0.766; 0.218 keeping one slice, 0.205 keeping four). A whole bucket kept brought back the
            # bursts the bucket removed (2:8's 100 ms error 15-17 pp).
            lag_kept = LAG_SLICES * self.policy.slice_us / state.weight
            state.vtime = max(state.vtime, self._min_vtime(exclude=tenant_id) - lag_kept)
        state.wants = True

    def release(
        self,
        tenant_id: str,
        used_us: int,
        now_us: int,
        still_wants: bool,
        ops_used: int = 0,
        *,
        grace_us: int | None = None,
        credit_us: int = 0,
    ) -> int:
        """The grant of ``tenant_id`` ended after it consumed ``used_us`` of device time (drained).

        ``grace_us`` replaces ``policy.charge_grace_us`` for this charge, and ``credit_us`` (at most the time held)
        comes off it (see Hand-off in the module docstring). Returns the device time charged (see Charging).
        """
        self._advance(now_us)
        state = self._state(tenant_id)
        self._charge(state, self._charge_of(state, used_us, grace_us, credit_us))
        if self.policy.mode == "share" and tenant_id in self._holders and not state.bonus and state.budget_given:
            overrun = max(0, state.budget_used - state.budget_given)
            state.overrun_us += (overrun - state.overrun_us) / 4  # a running mean over the last few holdings
        if tenant_id in self._holders and state.grant_round == self._round:
            state.ops_left = max(0, state.granted_ops - max(0, ops_used))
        state.wants = still_wants
        state.bonus = False
        self._holders.discard(tenant_id)
        return state.last_charge

    def extend(
        self,
        tenant_id: str,
        used_us: int,
        now_us: int,
        *,
        grace_us: int | None = None,
        credit_us: int = 0,
        slices: int = 1,
    ) -> Grant | None:
        """The holder's budget ran out with ``used_us`` consumed so far: a new grant if it would be picked anyway.

        On None the tenant keeps the card until it drains and calls ``release`` with the rest of its usage.
        ``grace_us`` and ``credit_us`` as in ``release``. ``slices``: the new grant may last that many slices (still
        no more than the tenant is owed, nor a window): for a holder nobody waits behind, whose caller cuts the
        grant back when someone comes.
        """
        self._advance(now_us)
        state = self._state(tenant_id)
        if self.policy.mode != "share" or tenant_id not in self._holders:
            state.last_charge = 0
            return None
        self._charge(state, self._charge_of(state, used_us, grace_us, credit_us))
        state.held_since = self._now
        pick = self._pick_share(exclude_holder=False)
        if pick is None or pick[0] is not state:
            return None
        state.bonus = pick[1]
        return self._hand_out(state, max(1, slices))

    def quantum_slices(self, tenant_id: str, most: int) -> int:
        """How many slices a renewal of ``tenant_id`` may last while others want the card: its weight over theirs
        (rounded down, 1 to ``most``), so that a round gives each busy tenant about its share in one piece; ``most``
        for a tenant of higher priority than every other that wants the card (``outranks_waiters``)."""
        state = self._states.get(tenant_id)
        if state is None:
            return 1
        if self.outranks_waiters(tenant_id):
            return max(1, most)
        others = sum(s.weight for s in self._states.values() if s.wants and s is not state)
        return max(1, min(most, state.weight // others if others else most))

    def preemptor(self, now_us: int) -> str | None:
        """The tenant that may start launching before its grant when it wants the card (the shared-memory path's
        preemptor): the only one of the highest priority on the card, above every other tenant, while it is owed
        device time. A want of it would revoke any holder and be granted next anyway (``share`` mode); naming it
        ahead takes the daemon's reaction out of its step's start. None in ``ops`` mode, for a tie at the top, or
        once its bucket ran dry (it then waits its turn as any tenant)."""
        self._advance(now_us)
        if self.policy.mode != "share" or len(self._states) < 2:
            return None
        ordered = sorted(self._states.values(), key=lambda s: -s.rank)
        top = ordered[0]
        if ordered[1].rank >= top.rank or self._owed(top) <= 0:
            return None
        return top.tenant.tenant_id

    def outranks_waiters(self, tenant_id: str) -> bool:
        """Whether ``tenant_id`` is of higher priority than every other tenant that wants the card (True when none
        does). Such a holder's grant needs no cutting into slices for the others: it would be picked again at every
        boundary (it is entitled as long as its bucket lasts, and the budget stops at what it is owed), and each
        boundary is a renewal it may wait for with its queue drained. Its idle moments give the card back (a yield)
        all the same."""
        state = self._states.get(tenant_id)
        if state is None:
            return False
        return all(s.rank < state.rank for s in self._states.values() if s.wants and s is not state)

    def yield_serves_other(self, now_us: int, holder_wants: bool = False) -> bool:
        """Whether a holder that gave its grant back now, at an idle moment, would see another tenant served: what
        makes its yield worth the hand-off. False while nobody holds the card, and when no waiter could be served
        (a capped tenant under a hard cap): the holder then keeps its grant through its host gaps instead of handing
        the card over and getting it back.

        Asked as the scheduler will be asked once the holding ended: with the holder out of the busy set unless
        ``holder_wants`` (a yield comes at an idle moment, with nothing queued). Counted in it, its weight could
        make the busy shares fill the card and let in a waiter past its share that, once the holder left, is not
        served: the yield would then only idle the card until the holder's next launch queues it again.
        """
        self._advance(now_us)
        if not self._holders:
            return False
        if self.policy.mode != "share":
            return any(s.wants and s.tenant.tenant_id not in self._holders for s in self._states.values())
        busy = sum(
            s.weight
            for s in self._states.values()
            if (holder_wants if s.tenant.tenant_id in self._holders else s.wants)
        )
        return self._pick_share(exclude_holder=True, busy=busy) is not None

    def decide(self, now_us: int) -> Decision:
        """Whom to grant now if the card is free, whom to revoke, when to call again."""
        self._advance(now_us)
        if self.policy.mode == "ops":
            return self._decide_ops()
        return self._decide_share()

    # ----- introspection ------------------------------------------------------------------------------------

    @property
    def holders(self) -> frozenset[str]:
        """Tenants holding a grant now."""
        return frozenset(self._holders)

    def owed_us(self, tenant_id: str) -> float:
        """Device time the tenant may still use: what its bucket holds, less its typical overrun (negative when it
        ran ahead)."""
        return self._owed(self._state(tenant_id))

    tokens_us = owed_us

    def rate(self, tenant_id: str) -> float:
        """The fraction of the card the tenant is entitled to under the current busy set."""
        return self._rate(self._state(tenant_id))

    def wants(self, tenant_id: str) -> bool:
        return self._state(tenant_id).wants

    def last_charge_us(self, tenant_id: str) -> int:
        """The device time charged to the tenant by its last ``extend`` or ``release``."""
        return self._state(tenant_id).last_charge

    # ----- share mode ---------------------------------------------------------------------------------------

    def _decide_share(self) -> Decision:
        if self._holders:
            holder = self._states[next(iter(self._holders))]
            if self._should_revoke(holder):
                return Decision(revoke=holder.tenant.tenant_id)
            return Decision(wake_at_us=self._next_entitled_us(above_rank=-1 if holder.bonus else holder.rank))
        pick = self._pick_share(exclude_holder=True)
        if pick is None:
            return Decision(wake_at_us=self._next_entitled_us(above_rank=-1))
        state, bonus = pick
        state.bonus = bonus
        state.budget_given = state.budget_used = 0
        state.held_since = self._now
        self._holders.add(state.tenant.tenant_id)
        return Decision(grant=self._hand_out(state))

    def _hand_out(self, state: _State, slices: int = 1) -> Grant:
        budget = self._budget(state, slices)
        state.budget_given += budget
        return Grant(state.tenant.tenant_id, budget)

    def _pick_share(self, exclude_holder: bool, busy: int | None = None) -> tuple[_State, bool] | None:
        """The tenant to serve next and whether it would run on a bonus grant; ``busy``: the busy set's weight to
        assume (default: as it is now)."""
        if busy is None:
            busy = self._busy_weight()
        waiting = [
            (s, self._owed(s, busy))
            for s in self._states.values()
            if s.wants and not (exclude_holder and s.tenant.tenant_id in self._holders)
        ]
        entitled = [(s, owed) for s, owed in waiting if owed > 0]
        if not entitled and busy >= self.policy.quota:
            # Nobody is owed more than its typical overrun, and the busy tenants' shares fill the card: rather than
            # idle it, serve those still under their share at all (what a cap allows), most owed first. On a card
            # the shares do not fill, idling is what the cap asks for, and this would pass it on every visit.
            entitled = [(s, owed) for s, owed in waiting if owed + s.overrun_us > 0]
        if entitled:
            best = max(entitled, key=lambda pair: (pair[0].rank, -pair[0].vtime, pair[0].tenant.tenant_id))
            return best[0], False
        if self.policy.share_in_idle and waiting:
            return min((s for s, _ in waiting), key=lambda s: (-s.rank, s.vtime, s.tenant.tenant_id)), True
        return None

    def _budget(self, state: _State, slices: int = 1) -> int:
        """A slice (or ``slices``, at most a window), shortened to what the tenant is still owed so that a hard cap
        is not overshot."""
        longest = min(self.policy.slice_us * slices, max(self.policy.slice_us, self.policy.window_us))
        if state.bonus:
            return longest
        shortest = max(50, self.policy.slice_us // 4)
        return max(shortest, min(longest, math.ceil(self._owed(state))))

    def _should_revoke(self, holder: _State) -> bool:
        busy = self._busy_weight()
        for state in self._states.values():
            if state is holder or not state.wants:
                continue
            if (state.rank > holder.rank or holder.bonus) and self._owed(state, busy) > 0:
                return True
        return False

    def _next_entitled_us(self, above_rank: int) -> int | None:
        """When the first waiting tenant of rank > ``above_rank`` becomes entitled, if any is not yet."""
        busy = self._busy_weight()
        times = [
            self._entitled_again_us(s, busy)
            for s in self._states.values()
            if s.wants and s.rank > above_rank and s.tenant.tenant_id not in self._holders and self._owed(s, busy) <= 0
        ]
        return min(times) if times else None

    def _entitled_again_us(self, state: _State, busy: int) -> int:
        """When the tenant's bucket will have filled past what it owes (it fills at its rate)."""
        return self._now + math.floor(-self._owed(state, busy) / self._rate(state, busy)) + 1

    # ----- ops mode -----------------------------------------------------------------------------------------

    def _decide_ops(self) -> Decision:
        interval = self.policy.ticker_interval_us
        round_end = (self._now // interval + 1) * interval
        for state in sorted(self._states.values(), key=lambda s: (-s.rank, s.tenant.tenant_id)):
            tenant_id = state.tenant.tenant_id
            if state.wants and state.ops_left > 0 and tenant_id not in self._holders:
                self._holders.add(tenant_id)
                state.held_since = self._now
                state.grant_round, state.granted_ops, state.ops_left = self._round, state.ops_left, 0
                return Decision(grant=Grant(tenant_id, round_end - self._now, state.granted_ops))
        starving = any(
            s.wants and s.ops_left == 0 and s.tenant.tenant_id not in self._holders for s in self._states.values()
        )
        return Decision(wake_at_us=round_end if starving else None)

    # ----- accounting ---------------------------------------------------------------------------------------

    def _advance(self, now_us: int) -> None:
        now = max(now_us, self._now)
        elapsed = now - self._now
        if elapsed:
            # Each bucket fills at its tenant's rate under the busy set of the interval (which changes only at the
            # events, after this).
            busy = self._busy_weight()
            for state in self._states.values():
                rate = self._rate(state, busy)
                self._add_credit(state, rate, rate * elapsed)
        self._now = now
        current_round = now // self.policy.ticker_interval_us
        if current_round != self._round:
            self._round = current_round
            for state in self._states.values():
                state.ops_left = state.tenant.aicore_alloc

    def _busy_weight(self) -> int:
        """The summed weight of the tenants that want the card or hold it."""
        return sum(s.weight for s in self._states.values() if s.wants or s.tenant.tenant_id in self._holders)

    def _rate(self, state: _State, busy: int | None = None) -> float:
        """The tenant's fraction of the card when the tenants of summed weight ``busy`` (and it) want it."""
        if busy is None:
            busy = self._busy_weight()
        if not (state.wants or state.tenant.tenant_id in self._holders):
            busy += state.weight
        return state.weight / max(self.policy.quota, busy)

    def _charge_of(self, state: _State, reported_us: int, grace_us: int | None = None, credit_us: int = 0) -> int:
        """What the holder pays for the time since its grant (or last extension); a non-holder pays nothing."""
        if state.tenant.tenant_id not in self._holders:
            state.last_charge = 0
        else:
            grace = self.policy.charge_grace_us if grace_us is None else grace_us
            held = self._now - state.held_since
            credit = min(max(0, credit_us), max(0, held))
            state.last_charge = max(0, charge_us(reported_us, held, grace) - credit)
        return state.last_charge

    def _charge(self, state: _State, used_us: int) -> None:
        used = max(0, used_us)
        state.budget_used += used
        if not state.bonus and used:
            self._add_credit(state, self._rate(state), -used)
        state.vtime += used / state.weight

    def _owed(self, state: _State, busy: int | None = None) -> float:
        # Less the tenant's typical overrun: a holding ends after its budget by the work in flight, so a tenant
        # let in with less owed than that would pass its share on every visit to the card.
        rate = self._rate(state, busy)
        if rate >= 1:
            # The whole card (alone in the busy set with a weight that fills the quota): a cap at the whole card
            # caps nothing. Charged max(reported, held) per holding, a busy tenant's charges add up to more than
            # the time that passed (a holding's tail reported in the next one, whose time held is charged too), so
            # its bucket would run dry and idle the card that nobody else wants.
            return float(self.policy.window_us)
        return min(state.credit, self._depth(rate)) - state.overrun_us

    def _add_credit(self, state: _State, rate: float, change: float) -> None:
        """Fill (or, with a negative ``change``, charge) the tenant's bucket: it holds at most its depth, and a debt
        of at most its share of a window."""
        full = self._depth(rate)
        state.credit = max(-rate * self.policy.window_us, min(full, min(full, state.credit) + change))

    def _depth(self, rate: float) -> float:
        """A bucket's depth: the tenant's share of a quarter window (see Shares in the module docstring)."""
        return max(rate * self.policy.window_us / BURST_OF_WINDOW, 2.0 * self.policy.slice_us)

    def _min_vtime(self, exclude: str | None = None) -> float:
        active = [
            s.vtime
            for s in self._states.values()
            if (s.wants or s.tenant.tenant_id in self._holders) and s.tenant.tenant_id != exclude
        ]
        return min(active) if active else 0.0

    def _state(self, tenant_id: str) -> _State:
        try:
            return self._states[tenant_id]
        except KeyError:
            raise UnknownTenantError(tenant_id) from None
