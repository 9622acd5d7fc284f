"""flexnpud's side of the shared-memory grant path (``flexnpu.shim.grant.shm``; the contract is flexnpu_shm.h).

The grant server stays the one place that decides; this adapter only mirrors its decisions into the files the
tenants' libflexnpu maps, and reads back what the tenants write:

- one card region ``card-<index>.grant`` per card, written here only: holder slot, epoch and deadline once per
  grant, and the successor published ahead of a deadline (``publish_next``, then ``promote``), each in the write
  order of ``shm.CardRegion`` (then ``seq`` + 1 and a futex wake of the waiters);
- one slot ``slot-<id>.shm`` per registration, created at registration with the daemon's fields (slot index,
  card, memory cap, share, priority) and removed when the registration goes.

Slots outlive the daemon. A pod's processes map their slot once, and the node component bind-mounts the slot
file into the container, which pins its inode: a slot made anew (a new inode) at a restart would leave the pod
writing its wants and usage where no daemon looks. So ``stop`` keeps the slots of live registrations (it revokes
and removes only the card regions, which libflexnpu maps again by path), and at start every registration the
daemon restores adopts the slot file a previous daemon left, in place, when it is a slot of this version
(``shm.Slot.adopt_or_create``; a symlink is never followed, a truncated or foreign file is replaced). The slot
index stays what the slot said (``adopted_index``: unless another slot has it, or it is out of range), so the pod
finds the same index before and after. The first ``sync`` after start removes the slot files that no
registration owns (``orphan_slots``). The usage a slot reports is counted from what it says when the daemon
first sees it (``flexnpu.shim.grant.server``): a restart never charges a pod its lifetime usage at once.

Everything read from a slot was written by a pod and is hostile: ``read_report`` turns a raw snapshot into a
``SlotReport`` of clamped values (a want flag that is not exactly 1 is no want; usage that goes backwards counts
nothing; memory figures are bounded), and ``usage_delta_us`` turns two cumulative ``used_ns`` readings into the
report the scheduler then charges (at least the time held: ``flexnpu.shim.core.slicing.charge_us``).

``watch`` (optional) is told of every slot's doorbell address as the slot comes, and forgets it before the slot is
unmapped: flexnpud's ``flexnpu.shim.grant.bells.Doorbells``. ``set_contended`` writes the card region's
``contended`` word (only when it changes), which tells a holder to give its grant back at its next idle sync.

Cards with a chip index other than 0 get no region (the protocol names a region by card index only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

from flexnpu.cards import Card
from flexnpu.registration import Registration
from flexnpu.shim.grant import shm
from flexnpu.shim.grant.messages import MAX_REPORT_US

log = logging.getLogger(__name__)

MIB = 1 << 20
# The most device memory a slot may claim (1 PiB): anything larger is a lie, clamped to it.
MAX_MEMORY_BYTES = 1 << 50
MAX_COUNT = 1 << 62
# Beyond the registrations of any node: a larger index in an adopted slot is a pod's lie, replaced by a fresh one.
MAX_SLOT_INDEX = 1 << 20
CardKey = tuple[int, int]
# A slot file, or the temporary file of a slot's creation that a crash left (``shm._create_file``).
_SLOT_FILE = re.compile(r"slot-.+\.shm(?:\.tmp[0-9]+)?", re.DOTALL)


@dataclass(frozen=True)
class SlotReport:
    """What a tenant's slot says, clamped: safe to use in decisions and figures."""

    want: bool
    used_ns: int
    mem_used_bytes: int
    mem_peak_bytes: int
    denied_allocs: int
    yield_epoch: int = 0
    yield_ns: int = 0
    reclaimed_bytes: int = 0
    excluded_ns: int = 0


class Watcher(Protocol):
    """What is told of the slots' doorbells (``flexnpu.shim.grant.bells.Doorbells``)."""

    def add(self, flexnpu_id: str, address: int) -> None: ...

    def forget(self, flexnpu_id: str) -> None: ...


def read_report(snapshot: shm.SlotSnapshot) -> SlotReport:
    """A slot's tenant-written fields as values the daemon may use (pure)."""
    return SlotReport(
        want=snapshot.want == 1,
        used_ns=min(snapshot.used_ns, MAX_COUNT),
        mem_used_bytes=min(snapshot.mem_used_bytes, MAX_MEMORY_BYTES),
        mem_peak_bytes=min(snapshot.mem_peak_bytes, MAX_MEMORY_BYTES),
        denied_allocs=min(snapshot.denied_allocs, MAX_COUNT),
        yield_epoch=snapshot.yield_epoch,
        yield_ns=min(snapshot.yield_ns, MAX_COUNT),
        reclaimed_bytes=min(snapshot.reclaimed_bytes, MAX_COUNT),
        excluded_ns=min(snapshot.excluded_ns, MAX_COUNT),
    )


def usage_delta_us(before_ns: int, after_ns: int) -> int:
    """Device time reported between two readings of the cumulative ``used_ns``; 0 when it went backwards (pure)."""
    if after_ns <= before_ns:
        return 0
    return min((after_ns - before_ns) // 1000, MAX_REPORT_US)


def adopted_index(hint: int | None, taken: AbstractSet[int], next_index: int) -> tuple[int, int]:
    """(the slot index of a registration whose slot is being made, the next fresh index) (pure).

    ``hint`` is the index an adopted slot carries: what the previous daemon wrote there, unless the pod rewrote
    it. It is kept when it is in range and no other slot has it, so that indexes stay as they were across a
    restart; otherwise the slot gets the next fresh index. Either way the daemon writes the index into the slot
    before any grant names it, so a rewritten hint gains a pod nothing.
    """
    if hint is not None and 0 <= hint < MAX_SLOT_INDEX and hint not in taken:
        return hint, max(next_index, hint + 1)
    index = next_index
    while index in taken:
        index += 1
    return index, index + 1


def orphan_slots(names: Iterable[str], owned: AbstractSet[str]) -> list[str]:
    """The entries of the shim directory that are slot files (or a crashed creation's temporary files) of no
    current registration, sorted (pure)."""
    return sorted(name for name in names if _SLOT_FILE.fullmatch(name) and name not in owned)


def region_index(key: CardKey) -> int | None:
    """The card region's index for a (card index, chip) key; None for a chip that has none."""
    index, chip = key
    return index if chip == 0 else None


class ShmGrants:
    """The card regions and registration slots in ``directory`` (see the module docstring)."""

    def __init__(
        self, directory: str, cards: Sequence[Card], daemon_pid_start: int, watch: Watcher | None = None
    ) -> None:
        self._watch = watch
        self._contended: dict[CardKey, bool] = {}
        self.directory = directory
        self._keys = [(c.index, c.chip) for c in cards if region_index((c.index, c.chip)) is not None]
        self._pid_start = daemon_pid_start
        self._regions: dict[CardKey, shm.CardRegion] = {}
        self._slots: dict[str, shm.Slot] = {}
        self._indexes: dict[str, int] = {}
        self._cards_of: dict[str, CardKey] = {}
        self._next_index = 0
        self._swept = False

    def start(self) -> None:
        """Create (or replace) one zeroed region per card: nobody holds any card."""
        os.makedirs(self.directory, exist_ok=True)
        for key in self._keys:
            index = region_index(key)
            assert index is not None
            path = self._path(shm.card_name(index))
            try:
                self._regions[key] = shm.CardRegion.create(path, self._pid_start)
            except shm.ShmError as exc:
                raise OSError(f"card grant region for card {index}: {exc}") from exc
            os.chmod(path, 0o644)  # every tenant reads it, whatever the daemon's umask

    def sync(self, registrations: Sequence[Registration], quota: int) -> None:
        """Slots for the current registrations: new ones created (or adopted), removed ones deleted, changed ones
        updated; the first call after ``start`` (the restored set) also removes the slot files nobody owns."""
        current = {r.flexnpu_id: r for r in registrations if (r.npu, r.chip) in self._regions}
        if not self._swept:
            self._swept = True
            self._remove_orphans({shm.slot_name(flexnpu_id) for flexnpu_id in current})
        for flexnpu_id in [f for f in self._slots if f not in current]:
            self._remove(flexnpu_id)
        for flexnpu_id, registration in current.items():
            slot = self._slots.get(flexnpu_id)
            if slot is not None and self._cards_of[flexnpu_id] != (registration.npu, registration.chip):
                self._remove(flexnpu_id)  # moved to another card: a new slot (and slot index) there
                slot = None
            if slot is None:
                self._create(registration, quota)
            else:
                _set_daemon_fields(slot, registration, quota)

    def slot_index(self, flexnpu_id: str) -> int | None:
        return self._indexes.get(flexnpu_id)

    def has_slot(self, flexnpu_id: str) -> bool:
        return flexnpu_id in self._slots

    def wants(self, flexnpu_id: str) -> bool:
        """The slot's want flag alone (one load: what the poll of idle slots reads); exactly 1 is a wish."""
        slot = self._slots.get(flexnpu_id)
        return slot is not None and slot.get("want") == 1

    def yielded(self, flexnpu_id: str, epoch: int) -> bool:
        """True when the slot says its pod gave back the grant of ``epoch`` (one load)."""
        slot = self._slots.get(flexnpu_id)
        return slot is not None and slot.get("yield_epoch") == epoch & 0xFFFFFFFF

    def set_contended(self, key: CardKey, contended: bool) -> None:
        """The card region's ``contended`` word, written when it changes."""
        region = self._regions.get(key)
        if region is None or self._contended.get(key, False) == contended:
            return
        self._contended[key] = contended
        region.set("contended", int(contended))

    def usage(self, flexnpu_id: str) -> tuple[int, bool, int] | None:
        """(used_ns, want, yield_ns) of the slot, clamped as ``read_report`` does: the three loads a charge needs."""
        slot = self._slots.get(flexnpu_id)
        if slot is None:
            return None
        return min(slot.get("used_ns"), MAX_COUNT), slot.get("want") == 1, min(slot.get("yield_ns"), MAX_COUNT)

    def excluded(self, flexnpu_id: str) -> int:
        """The slot's cumulative ``excluded_ns`` (one load, clamped; 0 without a slot): device time its pod's timing
        left out as another holder's, which flexnpud excuses only as far as it measured such tails."""
        slot = self._slots.get(flexnpu_id)
        return 0 if slot is None else min(slot.get("excluded_ns"), MAX_COUNT)

    def report(self, flexnpu_id: str) -> SlotReport | None:
        """The slot's clamped report, or None when the registration has no slot."""
        slot = self._slots.get(flexnpu_id)
        return None if slot is None else read_report(slot.snapshot())

    def publish(
        self, key: CardKey, flexnpu_id: str | None, epoch: int, deadline_ns: int, ended_ns: int | None = None
    ) -> None:
        """The card is now held by ``flexnpu_id``'s slot until ``deadline_ns`` (None: by nobody); ``ended_ns``:
        when the grant before it ended (written before the grant word; None leaves it)."""
        region = self._regions.get(key)
        if region is None:
            return
        holder = shm.NO_HOLDER if flexnpu_id is None else self._indexes.get(flexnpu_id, shm.NO_HOLDER)
        region.publish(
            holder,
            epoch & 0xFFFFFFFF,
            deadline_ns if holder != shm.NO_HOLDER else 0,
            ended_ns,
            wake=self._waiting(key),
        )

    def publish_next(self, key: CardKey, flexnpu_id: str, epoch: int, deadline_ns: int) -> None:
        """``flexnpu_id``'s slot holds the card from the current grant's deadline until ``deadline_ns``, without
        waiting for the daemon there (the successor published ahead; ``promote`` later makes it the grant)."""
        region = self._regions.get(key)
        holder = self._indexes.get(flexnpu_id)
        if region is not None and holder is not None:
            region.publish_next(holder, epoch & 0xFFFFFFFF, deadline_ns, wake=self._waiting(key))

    def set_preemptor(self, key: CardKey, flexnpu_id: str | None) -> None:
        """Name the card's preemptor (None: nobody): its slot may launch while its want is 1, whoever holds the
        card, and the other slots' gates stop meanwhile (flexnpu_shm.h). One write, only when it changes."""
        region = self._regions.get(key)
        index = None if flexnpu_id is None else self._indexes.get(flexnpu_id)
        value = 0 if index is None else index + 1
        if region is not None and region.get("preempt") != value:
            region.set("preempt", value)

    def promote(self, key: CardKey) -> None:
        """The successor published ahead becomes the card's grant (its tenant, running since the deadline, goes on)."""
        region = self._regions.get(key)
        if region is not None:
            region.promote(wake=self._waiting(key))

    def _waiting(self, key: CardKey) -> bool:
        """Whether a slot of this card waits (the futex wake, a syscall and the most of a publish's cost from
        Python, only then: a tenant sets want=1 before it sleeps on seq, and one that has not slept yet finds seq
        moved and does not sleep)."""
        return any(self._cards_of[f] == key and slot.get("want") for f, slot in self._slots.items())

    def state(self, key: CardKey) -> shm.GrantState | None:
        region = self._regions.get(key)
        return None if region is None else region.state()

    def stop(self) -> None:
        """Nobody holds any card (waiters wake, find no daemon and pace locally) and the card regions are removed;
        the slots of the registrations are unmapped but stay on disk, for the next daemon to adopt."""
        for region in self._regions.values():
            with contextlib.suppress(OSError, ValueError):
                region.revoke(0)
            region.close()
            _unlink(region.path)
        self._regions.clear()
        for flexnpu_id in list(self._slots):
            self._close(flexnpu_id)

    def _create(self, registration: Registration, quota: int) -> None:
        path = self._path(shm.slot_name(registration.flexnpu_id))
        try:
            slot, adopted = shm.Slot.adopt_or_create(path)
        except (OSError, shm.ShmError) as exc:
            log.warning(
                "shared-memory grant path: no slot for %r (%s); it gets grants over the socket only",
                registration.flexnpu_id,
                exc,
            )
            return
        hint = slot.get("slot_index") if adopted else None
        index, self._next_index = adopted_index(hint, set(self._indexes.values()), self._next_index)
        slot.write_daemon_fields(
            slot_index=index,
            card_index=registration.npu,
            mem_cap_bytes=registration.memory_alloc * MIB,
            share_permille=_permille(registration, quota),
            priority=registration.priority.rank,
        )
        if adopted:
            log.info("slot of %r adopted from a previous daemon (slot index %d)", registration.flexnpu_id, index)
        # Every process of the pod maps its slot read-write, whatever uid it runs as (the card region stays 0644).
        # Which pods see which slots is the device plugin's mount, not this file's mode.
        os.chmod(path, 0o666)
        self._slots[registration.flexnpu_id] = slot
        self._indexes[registration.flexnpu_id] = index
        self._cards_of[registration.flexnpu_id] = (registration.npu, registration.chip)
        if self._watch is not None:
            self._watch.add(registration.flexnpu_id, slot.address("doorbell"))

    def _remove(self, flexnpu_id: str) -> None:
        """The registration went: its slot is unmapped and its file removed."""
        _unlink(self._close(flexnpu_id))

    def _close(self, flexnpu_id: str) -> str:
        """Unmap the slot (its file stays); returns the file's path."""
        if self._watch is not None:
            self._watch.forget(flexnpu_id)  # before the unmap: the watcher never reads the address again
        slot = self._slots.pop(flexnpu_id)
        self._indexes.pop(flexnpu_id, None)
        self._cards_of.pop(flexnpu_id, None)
        slot.close()
        return slot.path

    def _remove_orphans(self, owned: AbstractSet[str]) -> None:
        """Remove the slot files no registration owns (a registration removed while no daemon ran, or a crash
        between a creation's write and its rename); a symlink is removed, never followed."""
        try:
            entries = os.listdir(self.directory)
        except OSError as exc:
            log.warning("shared-memory grant path: %s cannot be listed (%s); orphan slots stay", self.directory, exc)
            return
        for name in orphan_slots(entries, owned):
            try:
                _unlink(self._path(name))
            except OSError as exc:
                log.warning("shared-memory grant path: orphan %s cannot be removed (%s)", name, exc)
                continue
            log.info("shared-memory grant path: removed %s, which no registration owns", name)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)


def _set_daemon_fields(slot: shm.Slot, registration: Registration, quota: int) -> None:
    slot.set("mem_cap_bytes", registration.memory_alloc * MIB)
    slot.set("share_permille", _permille(registration, quota))
    slot.set("priority", registration.priority.rank)


def _permille(registration: Registration, quota: int) -> int:
    return min(1000, max(0, registration.aicore_alloc * 1000 // max(1, quota)))


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
