"""The daemon side of the shared-memory grant path: card regions and slots, driven by fake tenants via shm.py.

A fake tenant maps its slot read-write and the card region read-only through ``flexnpu.shim.grant.shm`` (what
libflexnpu does in C) and writes what it likes, hostile values included. The server runs on a manual clock with
its timer off; ``run_timers`` is the slice boundary.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rt_helpers import CARD, ManualClock, registration, wait_for

from flexnpu.priority import Priority
from flexnpu.registration import Registration
from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.grant import shm
from flexnpu.shim.grant.bells import Doorbells, RingBudget, available
from flexnpu.shim.grant.server import (
    LONE_SLICES,
    MAX_TAIL_US,
    RING_BURST,
    RINGS_PER_SLICE,
    SLOT_CHARGE_GRACE_US,
    SLOT_POLL_SLICES,
    SLOT_SWEEP_SLICES,
    GrantServer,
    renew_ahead_us,
    unexcused_us,
)
from flexnpu.shim.grant.shmgrants import SlotReport, read_report, usage_delta_us
from flexnpu.shim.runtime import wire
from flexnpu.shim.runtime.grant_client import GrantClient

SLICE_US = 2000
GRACE_US = SlicePolicy().charge_grace_us
KEY = (CARD.index, CARD.chip)
PID_START = (4242 << 32) | 7


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    return tmp_path / "shim"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_server(
    grant_socket: str, shm_dir: Path, clock: ManualClock, tmp_path: Path
) -> Iterator[Callable[..., GrantServer]]:
    servers: list[GrantServer] = []

    def make(registrations: list[Registration], doorbells: bool = True) -> GrantServer:
        server = GrantServer(
            grant_socket,
            SlicePolicy(quota=10, slice_us=SLICE_US),
            [CARD],
            proc_root=tmp_path,
            clock_us=clock,
            timer=False,
            shm_dir=str(shm_dir),
            daemon_pid_start=PID_START,
            doorbells=doorbells,
        )
        server.start()
        servers.append(server)
        server.set_registrations(registrations)
        return server

    yield make
    for server in servers:
        server.stop()


class Tenant:
    """A pod's libflexnpu as the daemon sees it: its slot (read-write) and its card's region (read-only)."""

    def __init__(self, shm_dir: Path, flexnpu_id: str) -> None:
        self.slot = shm.Slot.open(str(shm_dir / shm.slot_name(flexnpu_id)))
        region = shm.open_card(str(shm_dir), self.slot.get("card_index"))
        assert region is not None
        self.region = region

    @property
    def index(self) -> int:
        return self.slot.get("slot_index")

    def holds(self) -> bool:
        return self.region.state().holder == self.index

    def want(self, flag: int = 1) -> None:
        self.slot.set("want", flag)

    def use(self, used_us: int) -> None:
        self.slot.set("used_ns", self.slot.get("used_ns") + used_us * 1000)

    def holds_at(self, now_us: int) -> tuple[int, int, int] | None:
        """libflexnpu's view at ``now_us``: (epoch, deadline_ns, began_ns) of the grant it holds (its grant, or the
        successor published ahead once the grant before it ended), else None."""
        view = self.region.view()
        assert view is not None
        return shm.holding(view, self.index, self.slot.get("yield_epoch"), now_us * 1000)

    def ring(self) -> None:
        """What libflexnpu does after a want 0 -> 1 or a yield: bump the doorbell, wake whoever sleeps on it."""
        self.slot.set("doorbell", self.slot.get("doorbell") + 1)
        self.slot.futex_wake("doorbell")

    def give_back(self, at_ns: int) -> None:
        """libflexnpu's yield at an idle sync: yield_ns, then yield_epoch = the grant's epoch, then a ring."""
        self.slot.set("yield_ns", at_ns)
        self.slot.set("yield_epoch", self.region.state().epoch)
        self.ring()

    def close(self) -> None:
        self.slot.close()
        self.region.close()


@pytest.fixture
def tenants(shm_dir: Path) -> Iterator[Callable[[str], Tenant]]:
    opened: list[Tenant] = []

    def open_tenant(flexnpu_id: str) -> Tenant:
        tenant = Tenant(shm_dir, flexnpu_id)
        opened.append(tenant)
        return tenant

    yield open_tenant
    for tenant in opened:
        tenant.close()


def test_the_daemon_creates_a_region_per_card_and_a_slot_per_registration(
    make_server: Callable[[list[Registration]], GrantServer], shm_dir: Path, tenants: Callable[[str], Tenant]
) -> None:
    make_server(
        [registration("a", units=5, memory_mib=2048), registration("ns/pod b", units=2, priority=Priority.HIGH)]
    )
    names = sorted(p.name for p in shm_dir.iterdir())
    assert names == sorted(["card-0.grant", "slot-a.shm", shm.slot_name("ns/pod b")])
    a, b = tenants("a"), tenants("ns/pod b")
    assert a.slot.snapshot() == shm.SlotSnapshot(
        slot_index=a.index,
        card_index=0,
        mem_cap_bytes=2048 << 20,
        mem_used_bytes=0,
        used_ns=0,
        inflight_est_ns=0,
        want=0,
        doorbell=0,
        share_permille=500,
        priority=1,
        mem_peak_bytes=0,
        denied_allocs=0,
        yield_epoch=0,
        yield_ns=0,
    )
    assert (b.slot.get("share_permille"), b.slot.get("priority")) == (200, 2)
    assert a.index != b.index
    state = a.region.state()
    assert (state.holder, state.daemon_pid_start) == (shm.NO_HOLDER, PID_START)
    assert (shm_dir / "slot-a.shm").stat().st_mode & 0o777 == 0o666  # the pod's processes write it, any uid
    assert (shm_dir / "card-0.grant").stat().st_mode & 0o777 == 0o644  # only flexnpud writes it


def test_a_slot_that_wants_is_granted_in_the_region_and_charged_at_the_deadline(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    seq = a.region.state().seq
    a.want()
    server.run_timers()
    state = a.region.state()
    assert a.holds() and state.epoch > 0 and state.seq > seq
    assert state.deadline_ns == (clock.now_us + SLICE_US) * 1000
    a.use(1500)  # under-reports: it held the card for the whole slice
    clock.now_us += SLICE_US
    server.run_timers()
    renewed = a.region.state()
    assert a.holds() and renewed.epoch > state.epoch  # nobody else wants: a new grant without a gap
    assert renewed.deadline_ns == (clock.now_us + LONE_SLICES * SLICE_US) * 1000  # several slices: it is alone
    assert server.stats()["a"]["device_time_us"] == SLICE_US
    a.want(0)
    a.use(500)
    clock.now_us = renewed.deadline_ns // 1000
    server.run_timers()
    assert a.region.state().holder == shm.NO_HOLDER
    assert server.stats()["a"]["device_time_us"] == (1 + LONE_SLICES) * SLICE_US
    assert server.holders()[KEY] == frozenset()


def _alone_into_the_renewal_lead(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> tuple[GrantServer, Tenant, shm.GrantState]:
    """A lone slot granted the card, its want cleared (libflexnpu does when it sees the grant), then the clock moved
    100 µs into the renewal's lead, before the deadline."""
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    a.want()
    server.run_timers()
    granted = a.region.state()
    a.want(0)
    clock.now_us += SLICE_US - renew_ahead_us(SLICE_US) + 100
    return server, a, granted


def test_a_holder_that_still_wants_is_renewed_before_its_deadline(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server, a, granted = _alone_into_the_renewal_lead(make_server, clock, tenants)
    a.use(1000)
    a.want()  # a launch in the grant's last moments: it will want the card after it
    server.run_timers()
    renewed = a.region.state()
    assert a.holds() and renewed.epoch > granted.epoch
    assert granted.deadline_ns > clock.now_us * 1000  # the old grant had not ended: the gate never saw it lapse
    assert renewed.deadline_ns == (clock.now_us + LONE_SLICES * SLICE_US) * 1000
    assert a.region.get("ended_ns") == 0  # a renewal, not a hand-off
    assert server.stats()["a"]["device_time_us"] == SLICE_US - renew_ahead_us(SLICE_US) + 100  # the time held


def test_a_holder_that_does_not_want_is_not_renewed_ahead_and_keeps_its_deadline(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server, a, granted = _alone_into_the_renewal_lead(make_server, clock, tenants)
    server.run_timers()
    assert a.region.state() == granted  # nothing written: it may still launch until its deadline
    clock.now_us = granted.deadline_ns // 1000
    server.run_timers()
    assert a.region.state().holder == shm.NO_HOLDER  # idle at its deadline: let go


def test_a_holder_that_used_the_card_in_its_grant_is_renewed_ahead_without_its_want(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    # a bursty program between a synchronise (which withdrew its want) and its next launch at the renewal's moment
    server, a, granted = _alone_into_the_renewal_lead(make_server, clock, tenants)
    a.use(800)
    server.run_timers()
    renewed = a.region.state()
    assert a.holds() and renewed.epoch > granted.epoch
    assert renewed.deadline_ns == (clock.now_us + LONE_SLICES * SLICE_US) * 1000
    # the next grant it does not use: let go at its deadline, charged the time it held both
    clock.now_us = renewed.deadline_ns // 1000 - renew_ahead_us(SLICE_US) + 100
    server.run_timers()
    assert a.region.state() == renewed
    clock.now_us = renewed.deadline_ns // 1000
    server.run_timers()
    assert a.region.state().holder == shm.NO_HOLDER
    held = SLICE_US - renew_ahead_us(SLICE_US) + 100 + LONE_SLICES * SLICE_US
    assert server.stats()["a"]["device_time_us"] == held


def test_a_renewal_ahead_refused_for_a_waiter_leaves_the_holder_its_deadline(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    # b is owed as much as a was at its grant, and a has held the card since
    server, a, b, granted = _successor_published_ahead(make_server, clock, tenants, a_wants=True)
    state = a.region.state()
    assert a.holds() and (state.epoch, state.deadline_ns) == (granted.epoch, granted.deadline_ns)  # not cut short
    clock.now_us = granted.deadline_ns // 1000
    server.run_timers()
    assert b.holds()


def _renewed_alone(
    server: GrantServer, holder: Tenant, clock: ManualClock
) -> tuple[shm.GrantState, shm.GrantState, int]:
    """``holder`` is granted the free card, then renewed in its renewal lead while nobody else waits: for
    LONE_SLICES slices. (its first grant, the renewed one, when it was renewed)"""
    holder.want()
    server.run_timers()
    first = holder.region.state()
    clock.now_us = first.deadline_ns // 1000 - renew_ahead_us(SLICE_US) + 100
    holder.use(1000)
    server.run_timers()
    long = holder.region.state()
    assert long.holder == holder.index and long.deadline_ns == (clock.now_us + LONE_SLICES * SLICE_US) * 1000
    return first, long, clock.now_us


def test_a_lone_holder_renewed_for_several_slices_is_cut_back_to_its_slice_when_another_wants(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a, b = tenants("a"), tenants("b")
    first, long, renewed_at = _renewed_alone(server, a, clock)
    # b comes in the renewal's third slice: a's grant now ends with that slice, a new epoch for the same holder
    clock.now_us = renewed_at + 2 * SLICE_US + 700
    b.want()
    b.ring()
    wait_for(lambda: a.region.state().epoch > long.epoch, "the daemon to cut a's grant back for b")
    cut = a.region.state()
    assert cut.holder == a.index and cut.deadline_ns == (renewed_at + 3 * SLICE_US) * 1000
    assert a.holds_at(clock.now_us) is not None and b.holds_at(clock.now_us) is None
    # at that slice's end the card goes to b (a's charge: the time it held, not the slices it was promised)
    clock.now_us = cut.deadline_ns // 1000
    server.run_timers()
    assert b.holds_at(clock.now_us) is not None and a.holds_at(clock.now_us) is None
    assert server.stats()["a"]["device_time_us"] == cut.deadline_ns // 1000 - first.deadline_ns // 1000 + SLICE_US


def test_a_holder_above_the_waiter_keeps_its_slices_and_renews_for_them(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("critical", units=3, priority=Priority.HIGH), registration("batch", units=7)])
    critical, batch = tenants("critical"), tenants("batch")
    _, long, renewed_at = _renewed_alone(server, critical, clock)
    # the batch tenant comes: it would not be served before the critical one, so nothing is cut back
    clock.now_us = renewed_at + 2 * SLICE_US + 700
    batch.want()
    batch.ring()
    wait_for(lambda: server.doorbell_counts("batch")[0] > 0, "the daemon to read the batch tenant's ring")
    server.run_timers()
    assert critical.region.state().epoch == long.epoch and critical.region.state().deadline_ns == long.deadline_ns
    # and, still busy at its next renewal, it renews for the bound again, the batch tenant waiting
    clock.now_us = long.deadline_ns // 1000 - renew_ahead_us(SLICE_US) + 100
    critical.use(LONE_SLICES * SLICE_US - 500)
    server.run_timers()
    again = critical.region.state()
    assert again.holder == critical.index and again.deadline_ns == (clock.now_us + LONE_SLICES * SLICE_US) * 1000


def test_the_daemon_names_the_preemptor_in_the_card_region(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("critical", units=3, priority=Priority.HIGH), registration("batch", units=7)])
    critical, batch = tenants("critical"), tenants("batch")
    batch.want()
    server.run_timers()
    assert batch.holds()
    assert critical.region.get("preempt") == critical.index + 1  # named while the batch tenant holds the card
    # a second tenant at high: no single preemptor any more
    server.set_registrations(
        [
            registration("critical", units=3, priority=Priority.HIGH),
            registration("batch", units=7),
            registration("other", units=2, priority=Priority.HIGH),
        ]
    )
    clock.now_us += SLICE_US
    server.run_timers()
    assert critical.region.get("preempt") == 0


def _successor_published_ahead(
    make_server: Callable[[list[Registration]], GrantServer],
    clock: ManualClock,
    tenants: Callable[[str], Tenant],
    extra: tuple[Registration, ...] = (),
    a_wants: bool = False,
    b_withdraws: bool = False,
) -> tuple[GrantServer, Tenant, Tenant, shm.GrantState]:
    """a holds the card, b waits for it; in a's renewal lead a is not renewed (b is owed more): the hand-over at a's
    deadline is decided and published as the card region's next grant. ``a_wants``: a still asks for the card then
    (a launch in its grant's last moments). ``b_withdraws``: b's want goes back to 0, with no ring, once queued."""
    server = make_server([registration("a", units=5), registration("b", units=5), *extra])
    a, b = tenants("a"), tenants("b")
    a.want()
    server.run_timers()
    granted = a.region.state()
    a.want(0)
    clock.now_us += 100
    b.want()
    b.ring()
    wait_for(lambda: a.region.get("contended") == 1, "the daemon to tell the holder that b waits")
    if b_withdraws:
        b.want(0)
    clock.now_us = granted.deadline_ns // 1000 - renew_ahead_us(SLICE_US) + 50
    a.want(int(a_wants))
    a.use(SLICE_US - renew_ahead_us(SLICE_US))
    server.run_timers()
    return server, a, b, granted


def test_a_waiter_whose_want_is_gone_by_the_hand_over_is_not_granted(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    """b asked for the card and was queued, then its want went back to 0 without a ring (a preemptor's step done
    before the daemon reacted, a synchronise withdrawing it): granted anyway, it would hold the card idle until its
    deadline and be charged for it. At a's renewal lead the daemon reads b's slot again and hands it nothing."""
    server, _, b, granted = _successor_published_ahead(make_server, clock, tenants, b_withdraws=True)
    deadline_us = granted.deadline_ns // 1000
    assert b.holds_at(deadline_us) is None and b.region.get("next_deadline_ns") == 0
    assert "b" not in server.holders().get(KEY, frozenset())


def test_the_hand_over_at_a_deadline_is_published_ahead_and_the_successor_needs_no_daemon_there(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server, a, b, granted = _successor_published_ahead(make_server, clock, tenants)
    deadline_us = granted.deadline_ns // 1000
    state = a.region.state()  # the grant word is a's, as granted, until its deadline
    assert (state.holder, state.epoch, state.deadline_ns) == (granted.holder, granted.epoch, granted.deadline_ns)
    assert a.holds_at(deadline_us - 1) is not None and b.holds_at(deadline_us - 1) is None
    held = b.holds_at(deadline_us)
    assert held is not None and a.holds_at(deadline_us) is None  # from the deadline on, b's, by the region alone
    epoch, until_ns, began_ns = held
    assert epoch > granted.epoch and began_ns == granted.deadline_ns and until_ns == (deadline_us + SLICE_US) * 1000
    assert a.region.get("contended") == 0  # for b now, and nobody waits behind it
    assert server.holders()[KEY] == frozenset({"b"})
    assert server.stats()["a"]["device_time_us"] == SLICE_US  # a charged as at its deadline: the whole slice
    # the daemon's timer at the deadline (or later) only promotes what b already holds
    clock.now_us = deadline_us + 300
    server.run_timers()
    state = a.region.state()
    assert (state.holder, state.epoch, state.deadline_ns) == (b.index, epoch, until_ns)
    assert a.region.get("ended_ns") == granted.deadline_ns and a.region.get("next_deadline_ns") == 0
    assert b.holds_at(clock.now_us) == (epoch, until_ns, 0)


def test_a_successor_published_ahead_is_withdrawn_for_a_higher_priority_tenant(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server, a, b, granted = _successor_published_ahead(
        make_server, clock, tenants, (registration("c", units=2, priority=Priority.HIGH),)
    )
    deadline_us = granted.deadline_ns // 1000
    assert b.holds_at(deadline_us) is not None
    c = tenants("c")
    c.want()
    c.ring()
    wait_for(lambda: a.region.get("next_deadline_ns") == 0, "the daemon to withdraw b's grant for c")
    assert b.holds_at(deadline_us) is None and b.holds_at(clock.now_us) is None
    server.run_timers()
    assert c.holds() and c.holds_at(clock.now_us) is not None
    assert a.holds_at(clock.now_us) is None and b.holds_at(clock.now_us) is None
    assert server.holders()[KEY] == frozenset({"c"})
    assert server.stats()["b"]["device_time_us"] == 0  # b never held the card: charged nothing


def test_two_slots_take_turns_slice_by_slice(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a, b = tenants("a"), tenants("b")
    a.want()
    b.want()
    holders = []
    server.run_timers()
    seq = a.region.state().seq
    for turn in range(6):
        server.run_timers()
        assert a.region.state().seq == seq + turn  # one write per slice: the hand-over, not "nobody" and then it
        assert a.holds() != b.holds()
        holders.append("a" if a.holds() else "b")
        (a if a.holds() else b).use(SLICE_US)
        clock.now_us += SLICE_US
    assert holders.count("a") == holders.count("b") == 3


@pytest.mark.parametrize(
    ("want", "used_ns", "charged"),
    [
        (7, 0, None),  # a want flag that is not exactly 1 is no wish
        (0xFFFFFFFF, 0, None),
        (1, (1 << 64) - 1, SLICE_US + SLOT_CHARGE_GRACE_US),  # claims the age of the universe: held + grace
        (1, 1, SLICE_US),  # a nanosecond: charged the slice it held
    ],
)
def test_hostile_slot_values_are_clamped(
    make_server: Callable[[list[Registration]], GrantServer],
    clock: ManualClock,
    tenants: Callable[[str], Tenant],
    want: int,
    used_ns: int,
    charged: int | None,
) -> None:
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    a.slot.set("mem_used_bytes", (1 << 64) - 1)
    a.want(want)
    server.run_timers()
    assert a.holds() is (charged is not None)
    a.slot.set("used_ns", used_ns)
    a.want(0)
    clock.now_us += SLICE_US
    server.run_timers()
    assert server.stats()["a"]["device_time_us"] == (charged or 0)
    assert server.stats()["a"]["memory_used_mib"] == (1 << 50) >> 20


def test_a_usage_counter_that_goes_backwards_charges_the_time_held(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    a.use(10_000)
    a.want()
    server.run_timers()
    a.slot.set("used_ns", 0)
    a.want(0)
    clock.now_us += SLICE_US
    server.run_timers()
    assert server.stats()["a"]["device_time_us"] == SLICE_US


def test_usage_past_one_charge_is_carried_to_the_next_one(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    # Long kernels ran past the deadlines (the daemon does not drain a slot's holder): one charge may exceed the
    # time held by the slot grace, the rest of the report is charged at the next one, not dropped.
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    a.want()
    server.run_timers()
    carried = LONE_SLICES * SLICE_US + 4000  # more than the next holding lasts (renewed alone: several slices)
    a.use(SLICE_US + SLOT_CHARGE_GRACE_US + carried)
    clock.now_us += SLICE_US
    server.run_timers()
    assert a.holds()
    assert server.stats()["a"]["device_time_us"] == SLICE_US + SLOT_CHARGE_GRACE_US
    a.want(0)
    clock.now_us = a.region.state().deadline_ns // 1000
    server.run_timers()
    assert a.region.state().holder == shm.NO_HOLDER
    assert server.stats()["a"]["device_time_us"] == SLICE_US + SLOT_CHARGE_GRACE_US + carried  # charged, not dropped


def test_an_unexcused_charge_does_not_forgive_usage_carried_from_before(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    # A report past one charge is carried. A later charge, capped, that also holds device time the slot's timing
    # left out (excluded_ns, no tail to excuse it) covers that time first, as no counter carries it: the rest of
    # the report is still carried, not forgiven.
    server = make_server([registration("a", units=10)])
    a = tenants("a")
    a.want()
    server.run_timers()
    first = SLICE_US + SLOT_CHARGE_GRACE_US  # a charge's cap
    renewed = LONE_SLICES * SLICE_US  # renewed alone
    left, excluded = 3000, 1500
    a.use(first + (renewed + SLOT_CHARGE_GRACE_US) + left)
    clock.now_us += SLICE_US
    server.run_timers()
    assert server.stats()["a"]["device_time_us"] == first
    a.slot.set("excluded_ns", excluded * 1000)
    a.want(0)
    clock.now_us = a.region.state().deadline_ns // 1000
    server.run_timers()
    assert server.stats()["a"]["device_time_us"] == first + renewed + SLOT_CHARGE_GRACE_US  # capped
    a.want()
    a.ring()
    for _ in range(100):  # granted again once its window lets it (it was charged past the time it held)
        server.run_timers()
        if a.holds():
            break
        clock.now_us += 1000
    held = a.region.state().deadline_ns // 1000 - clock.now_us
    assert a.holds() and held < left
    a.want(0)
    clock.now_us += held
    server.run_timers()
    # The report's rest, and the excluded time the capped charge covered first: both charged.
    assert server.stats()["a"]["device_time_us"] == first + renewed + SLOT_CHARGE_GRACE_US + left + excluded


@pytest.mark.parametrize(
    ("tail_us", "excluded_us", "charged"),
    [
        (1500, 0, SLICE_US - 1500),  # held 2000, 1500 of it ran the former holder's last kernel
        (0, 0, SLICE_US),
        ((1 << 40), 0, 0),  # a tail that covers the whole holding: the former holder pays it, this one nothing
        # What its timing left out as another holder's (excluded_ns) is excused only by the tails credited:
        (1500, 1500, SLICE_US - 1500),  # the former reported a 1500 µs tail: all excused
        (0, 6000, 300 + 6000),  # no tail ran in its holding: its own long first kernel, charged with its report
        (1000, 4000, 300 + 3000 - 1000),  # a part excused, the rest its own: max(300 + 3000, 2000) less 1000
    ],
)
def test_the_former_holders_work_after_its_deadline_is_not_charged_to_the_next_holder(
    make_server: Callable[[list[Registration]], GrantServer],
    clock: ManualClock,
    tenants: Callable[[str], Tenant],
    tail_us: int,
    excluded_us: int,
    charged: int,
) -> None:
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a, b = tenants("a"), tenants("b")
    a.want()
    b.want()
    server.run_timers()
    first, second = (a, b) if a.holds() else (b, a)
    first_id, second_id = ("a", "b") if first is a else ("b", "a")
    first.use(SLICE_US)
    clock.now_us += SLICE_US
    server.run_timers()
    assert second.holds()
    first.use(tail_us)  # measured when it drained, after its deadline
    second.use(300)
    second.slot.set("excluded_ns", excluded_us * 1000)  # what libflexnpu left out of it as another's
    second.want(0)
    clock.now_us += SLICE_US
    server.run_timers()
    assert server.stats()[second_id]["device_time_us"] == charged
    assert first.holds()
    first.want(0)
    clock.now_us += SLICE_US
    server.run_timers()
    # The former holder pays its tail (carried, at most the slot grace more than it held per charge).
    assert server.stats()[first_id]["device_time_us"] == 2 * SLICE_US + min(
        SLOT_CHARGE_GRACE_US, max(0, tail_us - SLICE_US)
    )


@pytest.mark.parametrize(
    ("excluded", "allowance", "expected"),
    [
        (1500, 1500, (0, 0)),
        (1500, 4000, (0, 2500)),  # a tail its report leaves out only at a later charge: kept for then
        (6000, 0, (6000, 0)),
        (4000, 1000, (3000, 0)),
        (0, 10**9, (0, MAX_TAIL_US)),  # kept no longer than one tail
        (-5, -5, (0, 0)),  # nonsense counts for nothing
    ],
)
def test_what_the_tails_do_not_excuse(excluded: int, allowance: int, expected: tuple[int, int]) -> None:
    assert unexcused_us(excluded, allowance) == expected


def test_a_higher_priority_socket_tenant_revokes_a_slot_holder(
    make_server: Callable[[list[Registration]], GrantServer],
    clock: ManualClock,
    grant_socket: str,
    tenants: Callable[[str], Tenant],
) -> None:
    server = make_server([registration("batch", units=5), registration("urgent", units=5, priority=Priority.HIGH)])
    batch = tenants("batch")
    batch.want()
    server.run_timers()
    assert batch.holds()
    clock.now_us += 700
    batch.use(300)  # what its events measured so far: less than it held
    urgent = wire.connect_unix(grant_socket, timeout=20)
    try:
        urgent.send({"op": wire.OP_HELLO, "id": "urgent"})
        assert urgent.receive(timeout=20)["op"] == wire.OP_WELCOME
        urgent.send({"op": wire.OP_WANT})
        # The revoke and the grant are one write: the slot's holding ends at the revoke, as at a deadline
        # (undrained; its last kernels are the next holder's tail), and the waiter is granted with no timer between.
        grant = urgent.receive(timeout=20)
        assert grant["op"] == wire.OP_GRANT
        assert batch.region.state().holder == tenants("urgent").index  # the batch's gate stops at its next launch
        assert server.holders()[KEY] == {"urgent"}
        assert server.stats()["batch"]["device_time_us"] == 700  # max(reported, held until the revoke)
        batch.want()  # its next launch found the card taken: it asks again (libflexnpu rings as it sets want)
        batch.ring()
        urgent.send({"op": wire.OP_RELEASE, "seq": grant["seq"], "used_us": 0})
        urgent.send({"op": wire.OP_PING})
        assert urgent.receive(timeout=20)["op"] == wire.OP_PONG
        wait_for(batch.holds, what="the batch tenant holding the card again")
    finally:
        urgent.close()


def test_a_high_priority_slot_takes_the_card_from_a_slot_holder_at_once(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("batch", units=7), registration("critical", units=3, priority=Priority.HIGH)])
    batch, critical = tenants("batch"), tenants("critical")
    batch.want()
    server.run_timers()
    assert batch.holds()
    first = batch.region.state().epoch
    clock.now_us += 400
    critical.want()
    critical.ring()
    wait_for(critical.holds, what="the critical tenant granted at the revoke")
    state = critical.region.state()
    assert state.epoch != first and critical.region.get("ended_ns") == clock.now_us * 1000  # timed from the revoke
    assert critical.holds_at(clock.now_us) is not None and batch.holds_at(clock.now_us) is None
    assert server.stats()["batch"]["device_time_us"] == 400
    # The batch's kernels still running at the revoke, reported after it, are the critical's tail credit.
    batch.use(250)
    clock.now_us += SLICE_US
    server.run_timers()
    assert server.stats()["critical"]["device_time_us"] == SLICE_US - 250


def test_a_socket_grant_is_published_for_the_pods_other_processes(
    make_server: Callable[[list[Registration]], GrantServer], grant_socket: str, tenants: Callable[[str], Tenant]
) -> None:
    make_server([registration("a", units=5)])
    a = tenants("a")
    client = GrantClient(grant_socket, "a", 0.5)
    try:
        lease = client.acquire()
        assert not lease.local
        assert a.holds() and a.region.state().epoch == lease.seq
        client.release(100)
        client.ping()
        assert a.region.state().holder == shm.NO_HOLDER
    finally:
        client.close()


def test_removing_a_registration_removes_its_slot_and_frees_the_card(
    make_server: Callable[[list[Registration]], GrantServer], shm_dir: Path, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a, b = tenants("a"), tenants("b")
    a.want()
    b.want()
    server.run_timers()
    holder, other = ("a", "b") if a.holds() else ("b", "a")
    server.set_registrations([registration(other, units=5)])
    assert not (shm_dir / shm.slot_name(holder)).exists()
    assert server.holders()[KEY] == {other}
    server.stop()
    assert os.listdir(shm_dir) == [shm.slot_name(other)]  # a live registration's slot stays for the next daemon


@pytest.mark.parametrize(
    ("before", "after", "delta"),
    [(0, 1_500_000, 1500), (5_000_000, 1_000, 0), (0, (1 << 64) - 1, 3_600_000_000), (7, 7, 0)],
)
def test_usage_delta_of_a_cumulative_counter(before: int, after: int, delta: int) -> None:
    assert usage_delta_us(before, after) == delta


def test_read_report_clamps_every_tenant_field() -> None:
    huge = (1 << 64) - 1
    raw = shm.SlotSnapshot(
        slot_index=0,
        card_index=0,
        mem_cap_bytes=0,
        mem_used_bytes=huge,
        used_ns=huge,
        inflight_est_ns=huge,
        want=2,
        doorbell=huge,
        share_permille=0,
        priority=0,
        mem_peak_bytes=huge,
        denied_allocs=huge,
        reclaimed_bytes=huge,
    )
    assert read_report(raw) == SlotReport(
        want=False,
        used_ns=1 << 62,
        mem_used_bytes=1 << 50,
        mem_peak_bytes=1 << 50,
        denied_allocs=1 << 62,
        reclaimed_bytes=1 << 62,
    )


TENANT_FIELDS = (
    "mem_used_bytes",
    "used_ns",
    "inflight_est_ns",
    "want",
    "doorbell",
    "mem_peak_bytes",
    "denied_allocs",
    "yield_epoch",
    "yield_ns",
    "reclaimed_bytes",
    "excluded_ns",
)
U64 = st.one_of(st.sampled_from([0, 1, 2, (1 << 32) - 1, (1 << 63) - 1, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1))


# Each slice the hostile sets its want flag (mostly to 1: then it is served, and its other values are charged) and
# writes a few other fields.
STEP = st.tuples(
    st.tuples(st.just("want"), st.sampled_from([1, 1, 1, 0, 2, 0xFFFFFFFF])),
    st.lists(st.tuples(st.sampled_from(TENANT_FIELDS), U64), max_size=4),
).map(lambda t: [t[0], *t[1]])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(STEP, min_size=1, max_size=12))
def test_no_slot_values_keep_the_honest_slots_from_the_card(
    tmp_path: Path, writes: list[list[tuple[str, int]]]
) -> None:
    # A hostile pod writes anything into its own slot at every slice; two honest slots want the card throughout.
    clock = ManualClock()
    directory = tmp_path / f"fuzz-{next(_fuzz_dirs)}"
    server = GrantServer(
        str(directory / "grant.sock"),
        SlicePolicy(quota=10, slice_us=SLICE_US),
        [CARD],
        proc_root=tmp_path,
        clock_us=clock,
        timer=False,
        shm_dir=str(directory),
    )
    server.start()
    opened: list[Tenant] = []
    try:
        server.set_registrations(
            [registration("a", units=4), registration("b", units=4), registration("evil", units=2)]
        )
        evil, a, b = (Tenant(directory, name) for name in ("evil", "a", "b"))
        opened += [evil, a, b]
        a.want()
        b.want()
        served = {"a": 0, "b": 0}
        for step in writes:
            for name, value in step:
                _write(evil.slot, name, value)
            server.run_timers()
            for name, tenant in (("a", a), ("b", b)):
                if tenant.holds():
                    served[name] += 1
                    tenant.use(SLICE_US)
            clock.now_us += SLICE_US
        for _ in range(6):  # then a few more slices: both honest slots get the card
            server.run_timers()
            for name, tenant in (("a", a), ("b", b)):
                served[name] += tenant.holds()
            clock.now_us += SLICE_US
        assert served["a"] and served["b"], served
        assert set(server.holders()[KEY]) <= {"a", "b", "evil"}
    finally:
        for tenant in opened:
            tenant.close()
        server.stop()


_fuzz_dirs = itertools.count()


def _write(slot: shm.Slot, name: str, value: int) -> None:
    size = shm.SLOT_FIELDS[name][1]
    slot.set(name, value & ((1 << (8 * size)) - 1))


def test_with_the_real_clock_a_slot_is_served_and_let_go_by_the_timer_alone(
    grant_socket: str, shm_dir: Path, tmp_path: Path
) -> None:
    # No test clock: the timer thread reads the slots, hands out the card and ends the holdings by itself.
    server = GrantServer(
        grant_socket, SlicePolicy(quota=10, slice_us=SLICE_US), [CARD], proc_root=tmp_path, shm_dir=str(shm_dir)
    )
    server.start()
    a: Tenant | None = None
    try:
        server.set_registrations([registration("a", units=5)])
        a = Tenant(shm_dir, "a")
        a.want()
        wait_for(a.holds, "the timer to grant the card to the slot")
        first = a.region.state().epoch
        wait_for(lambda: a is not None and a.region.state().epoch > first, "a renewal at the slice's end")
        a.want(0)
        wait_for(lambda: a is not None and a.region.state().holder == shm.NO_HOLDER, "the card to be let go")
        assert server.stats()["a"]["device_time_us"] >= SLICE_US  # charged at least the slices it held
    finally:
        if a is not None:
            a.close()
        server.stop()


def test_a_tenant_asleep_on_the_region_is_woken_by_its_grant(
    make_server: Callable[[list[Registration]], GrantServer], shm_dir: Path, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    # libflexnpu sleeps in FUTEX_WAIT on seq; a writable mapping gives Python the futex address to do the same.
    region = shm.CardRegion(str(shm_dir / shm.card_name(0)), writable=True)
    seq = region.state().seq
    woken: list[int] = []

    def sleep_on_seq() -> None:
        woken.append(threading.get_native_id())
        region.futex_wait("seq", seq, timeout_s=60)

    sleeper = threading.Thread(target=sleep_on_seq)
    a.want()  # before it sleeps, as the protocol says
    sleeper.start()
    try:
        wait_for(lambda: bool(woken) and _in_futex_wait(woken[0]), "the tenant thread to sleep on seq")
        server.run_timers()  # grants the card: the region changes and the daemon wakes the sleeper
        sleeper.join(timeout=30)
        assert not sleeper.is_alive(), "the grant did not wake the tenant asleep on seq"
        assert a.holds()
    finally:
        sleeper.join(timeout=60)
        region.close()


def _in_futex_wait(thread_id: int) -> bool:
    """True while the thread is blocked in the futex system call (Linux: /proc/<pid>/task/<tid>/syscall)."""
    try:
        fields = Path(f"/proc/self/task/{thread_id}/syscall").read_text(encoding="ascii").split()
    except OSError:
        return False
    return bool(fields) and fields[0] == str(shm._sys_futex())


def test_a_want_rung_on_the_doorbell_is_seen_without_waiting_for_a_poll(
    make_server: Callable[[list[Registration]], GrantServer], tenants: Callable[[str], Tenant]
) -> None:
    # The timer never runs (no run_timers, a clock that does not move): only the doorbell thread can see the want.
    # (Failed before it: the daemon read the want flag at its slot poll only, every SLOT_POLL_SLICES slices.)
    server = make_server([registration("a", units=5)])
    a = tenants("a")
    a.want()
    a.ring()
    wait_for(a.holds, "the doorbell thread to hand the card to the slot that rang")
    assert server.doorbell_counts("a")[0] >= 1


def test_a_holder_that_gives_its_grant_back_hands_the_card_on_before_its_deadline(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a, b = tenants("a"), tenants("b")
    a.want()
    a.ring()
    wait_for(a.holds, "a to be granted the free card")
    a.want(0)  # libflexnpu clears its want when it sees the grant
    assert a.region.get("contended") == 0  # nobody else waits: a keeps its grant at an idle sync
    granted = a.region.state()
    b.want()
    b.ring()
    wait_for(lambda: a.region.get("contended") == 1, "the daemon to tell the holder that b waits")
    clock.now_us += 300  # a ran 200 us of work in 300 us, then had nothing in flight at a sync
    a.use(200)
    a.give_back(at_ns=(clock.now_us - 100) * 1000)
    wait_for(b.holds, "the card to go to b at a's yield, long before a's deadline")
    state = b.region.state()
    assert clock.now_us * 1000 < granted.deadline_ns and state.epoch > granted.epoch
    assert state.deadline_ns == (clock.now_us + SLICE_US) * 1000
    assert state.daemon_pid_start == PID_START
    assert b.region.get("ended_ns") == (clock.now_us - 100) * 1000  # a's yield as it dated it, for the figure
    assert b.region.get("contended") == 0
    assert server.stats()["a"]["device_time_us"] == 300  # max(reported, held until the daemon saw the yield)
    assert server.holders()[KEY] == frozenset({"b"})


@pytest.mark.parametrize("epoch_offset", [1, -1, 1 << 31])
def test_a_yield_of_another_epoch_ends_nothing(
    make_server: Callable[[list[Registration]], GrantServer],
    clock: ManualClock,
    tenants: Callable[[str], Tenant],
    epoch_offset: int,
) -> None:
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a, b = tenants("a"), tenants("b")
    a.want()
    a.ring()
    wait_for(a.holds, "a to be granted the free card")
    b.want()
    b.ring()
    wait_for(lambda: a.region.get("contended") == 1, "the daemon to see b's want")
    handled = server.doorbell_counts("a")[0]
    a.slot.set("yield_epoch", (a.region.state().epoch + epoch_offset) & 0xFFFFFFFF)
    a.slot.set("yield_ns", (1 << 64) - 1)
    a.ring()
    wait_for(lambda: server.doorbell_counts("a")[0] > handled, "the daemon to read a's ring")
    assert a.holds() and server.holders()[KEY] == frozenset({"a"})
    clock.now_us += SLICE_US
    server.run_timers()  # its deadline: the card goes to b as usual
    assert b.holds()


def test_a_doorbell_flood_is_cut_to_its_ring_budget_and_the_honest_tenant_is_served(
    grant_socket: str, shm_dir: Path, tmp_path: Path
) -> None:
    # Real clock and timer. A hostile pod rings its doorbell as fast as it can from another process; the daemon
    # handles at most its ring budget of those rings, and an honest tenant's want is still served at once.
    server = GrantServer(
        grant_socket, SlicePolicy(quota=10, slice_us=SLICE_US), [CARD], proc_root=tmp_path, shm_dir=str(shm_dir)
    )
    server.start()
    opened: list[Tenant] = []
    flood: subprocess.Popen[str] | None = None
    try:
        server.set_registrations([registration("evil", units=5), registration("a", units=5)])
        evil, a = Tenant(shm_dir, "evil"), Tenant(shm_dir, "a")
        opened += [evil, a]
        started = time.monotonic()
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, evil.slot.path, "40000"], stdout=subprocess.PIPE, text=True
        )
        wait_for(lambda: evil.slot.get("doorbell") > 1000, "the flood to start")
        a.want()
        a.ring()
        wait_for(a.holds, "the honest tenant to be granted the card during the flood")
        out, _ = flood.communicate(timeout=120)
        elapsed = time.monotonic() - started
        rings = int(out)
        handled, _dropped = server.doorbell_counts("evil")
        budget = RING_BURST + RINGS_PER_SLICE * 1e6 / SLICE_US * elapsed
        assert rings == 40000 and handled <= budget + 1, (handled, budget, elapsed)
        assert handled < rings / 4
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.communicate()
        for tenant in opened:
            tenant.close()
        server.stop()


FLOOD = """
import sys
from flexnpu.shim.grant import shm
slot = shm.Slot.open(sys.argv[1])
count = int(sys.argv[2])
for _ in range(count):
    slot.set("doorbell", slot.get("doorbell") + 1)
    slot.futex_wake("doorbell")
print(count)
"""


@pytest.mark.parametrize(
    ("spent", "at_ns", "handled"),
    [
        (0, 0, True),
        (64, 0, False),  # the burst is spent, no time passed
        (64, 1_000_000, True),  # 1 ms at 2000 rings/s: two tokens back
    ],
)
def test_the_ring_budget_is_a_token_bucket(spent: int, at_ns: int, handled: bool) -> None:
    budget = RingBudget(64.0, 0)
    for _ in range(spent):
        budget, ok = budget.spend(0, 2000.0, 64)
        assert ok
    budget, ok = budget.spend(at_ns, 2000.0, 64)
    assert ok is handled
    assert budget.ready_at_ns(2000.0) >= at_ns


needs_futex_waitv = pytest.mark.skipif(not available(), reason="the doorbell thread needs futex_waitv (Linux 5.16+)")


def _ring_word(word: ctypes.c_uint32) -> None:
    word.value += 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(shm._sys_futex(), ctypes.byref(word), 1, 2**31 - 1, None, None, 0)  # FUTEX_WAKE


@needs_futex_waitv
def test_the_doorbells_name_a_slot_past_its_ring_budget_as_unwatched_until_it_has_a_token() -> None:
    frozen = [time.monotonic_ns()]  # the buckets' clock stands still: a spent bucket stays spent
    bells = Doorbells(lambda ids, woke: None, rate_per_s=0.001, burst=2, clock_ns=lambda: frozen[0])
    quiet, loud = ctypes.c_uint32(0), ctypes.c_uint32(0)
    bells.add("quiet", ctypes.addressof(quiet))
    bells.add("loud", ctypes.addressof(loud))
    assert bells.start() and bells.running
    try:
        assert bells.unwatched() == frozenset()
        for rung in range(1, 3):
            _ring_word(loud)
            wait_for(lambda: bells.counts("loud")[0] == rung, "the thread to read the ring")  # noqa: B023
        # its burst of 2 is spent: left out of the wait (a third ring would wake nobody), for the caller to read
        wait_for(lambda: bells.unwatched() == frozenset({"loud"}), "the thread to leave the spent slot out")
        assert bells.unwatched() == frozenset({"loud"})  # still out: no token yet
        frozen[0] += 10_000 * 10**9  # its bucket refills
        _ring_word(quiet)  # the next wake-up waits on it again
        wait_for(lambda: bells.counts("quiet") == (1, 0), "the thread to read the quiet slot's ring")
        wait_for(lambda: bells.unwatched() == frozenset(), "the loud slot to be waited on again")
    finally:
        bells.stop()
    assert not bells.running


@pytest.mark.parametrize("doorbells", [pytest.param(True, marks=needs_futex_waitv), False])
def test_a_want_without_a_ring_is_read_at_the_poll_only_without_the_doorbells(
    make_server: Callable[..., GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant], doorbells: bool
) -> None:
    # Every slot is read at the sweep, every SLOT_SWEEP_SLICES; between sweeps, while the doorbell thread runs,
    # only the slots it does not watch and those in use lately are (none here). Before, every slot was read every
    # SLOT_POLL_SLICES: 5.4% of a core for 80 registrations that did nothing. Without the thread, every slot is.
    server = make_server([registration("a", units=5), registration("b", units=5)], doorbells=doorbells)
    a = tenants("a")
    server.run_timers()  # the first sweep
    a.want()  # set, but never rung
    clock.now_us += SLOT_POLL_SLICES * SLICE_US
    server.run_timers()
    assert a.holds() is not doorbells
    clock.now_us += (SLOT_SWEEP_SLICES - SLOT_POLL_SLICES) * SLICE_US
    server.run_timers()
    assert a.holds()


@needs_futex_waitv
def test_a_slot_in_use_lately_is_read_every_few_slices_for_a_want_that_rings_nothing(
    make_server: Callable[[list[Registration]], GrantServer], clock: ManualClock, tenants: Callable[[str], Tenant]
) -> None:
    # libflexnpu's early want near a deadline rings nothing: a slot that held the card within the scheduler's
    # window is read at the poll every SLOT_POLL_SLICES, not only at the sweep.
    server = make_server([registration("a", units=5), registration("b", units=5)])
    a = tenants("a")
    server.run_timers()  # the first sweep
    a.want()
    a.ring()
    wait_for(a.holds, "a to be granted the free card")
    a.want(0)
    clock.now_us = a.region.state().deadline_ns // 1000
    server.run_timers()  # its grant ends: it wanted nothing more
    assert not a.holds()
    a.want()  # set, never rung
    clock.now_us += SLOT_POLL_SLICES * SLICE_US
    server.run_timers()
    assert a.holds()
