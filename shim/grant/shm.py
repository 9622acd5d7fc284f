"""The shared-memory grant protocol, version 2, in Python: the mirror of ``shim/native/flexnpu_shm.h``.

flexnpud creates one card grant region per card (``card-<index>.grant``, it alone writes it) and one slot per
registration (``slot-<id>.shm``, every process of the pod maps it read-write) in the shim directory. The tenant's
libflexnpu reads the grant word on every launch and blocks on the region's ``seq`` futex when it does not hold
the card; the daemon learns of wants from the slot's ``want`` flag and ``doorbell`` futex.

What libflexnpu (the tenant side) does with the slot, for the daemon's reading: ``want`` goes 1 when a process of
the pod waits for the card (it drained its own work first and added the device time its events measured to
``used_ns``; ``inflight_est_ns`` is what it estimated in flight at that drain), the first 0->1 bumps ``doorbell``
and FUTEX_WAKEs it; ``want`` goes back to 0 when the process sees the grant (so a holder that stays at 0 after
its deadline is idle). ``mem_used_bytes`` is the pod's fetch-add/sub account (never past ``mem_cap_bytes`` by
the tenant's own checks), ``mem_peak_bytes`` its high-water mark, ``denied_allocs`` the refusals. A tenant that
sees no change of ``seq`` for 2 s while waiting paces itself locally at ``share_permille``.

The yield (version 2): while ``contended`` is 1 in the card region (the daemon sets it while a tenant other than
the holder waits), a holder process that has nothing in flight at an application sync, and launched in the
current grant, gives the grant back: it writes ``yield_ns`` then ``yield_epoch`` = the grant's epoch, stops
treating that epoch as granted (every process of the pod reads ``yield_epoch`` on each launch), and bumps and
wakes ``doorbell``. flexnpud sleeps on the doorbells of all slots at once (``futex_waitv``, see
``flexnpu.shim.grant.bells``), so a want or a yield is seen at once, not at the next slot poll. ``ended_ns``
says when the grant the current one directly follows ended (its deadline, or its holder's yield; 0 after a free
card or for a renewal of the same holder); the next holder's
libflexnpu measures the hand-off from it to the moment its gate lets a launch through (``handoff_hist``), and,
when nobody held the card, from its want to that moment (``acquire_hist``): figures, bucketed by
``hist_bucket``.

The successor: a grant that follows the current one at its deadline may be published ahead (``next_grant`` and
``next_deadline_ns``): the slot it names holds the card from ``deadline_ns`` to ``next_deadline_ns`` by itself (its
gate's timed wait ends at the deadline, without the daemon), and flexnpud promotes it to the grant word later, the
same epoch. Every write of the region follows the orders in flexnpu_shm.h (``CardRegion.publish``,
``publish_next``, ``promote``), with the holder ``PUBLISHING`` while a grant is written, so that a reader that reads
the grant word before and after the rest, and retries while they differ, never pairs one grant with another's
deadline.

The preemptor (``preempt``, the slot index + 1, 0: none): flexnpud names the one registration of higher priority
than every other on the card while it is owed device time. Its libflexnpu launches as soon as its ``want`` is 1,
before the daemon reacts, and every other slot's libflexnpu treats its own grant as revoked while that want
stands (reading the preemptor's slot, read-only); flexnpud then revokes the holder and grants the preemptor as
usual, and the preemptor's wait is timed as an acquire. The Python runtime's tenant side
(``shim/runtime/shm_client.py``) gives way as a holder, and as a preemptor waits for its grant.

Stores and loads of a field are single naturally aligned 4- or 8-byte accesses through ctypes (atomic on x86-64
and aarch64); the daemon is the only writer of the card region and of the slot's daemon fields, so it needs no
read-modify-write. Everything read from a slot was written by a pod: callers clamp it (``Slot.snapshot`` only
reads). Standard library only, Python 3.9+ (the in-pod runtime uses it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import mmap
import os
import platform
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass

SHM_SIZE = 4096
VERSION = 2
CARD_MAGIC = 0x46584E50  # "PNXF" little-endian: bytes 'P','N','X','F'
SLOT_MAGIC = 0x534E5846  # "FXNS"
NO_HOLDER = 0xFFFFFFFF
PUBLISHING = 0xFFFFFFFE  # the holder while flexnpud writes a grant (readers retry): flexnpu_shm.h's write orders
ID_MAX = 128
HIST_BUCKETS = 128

# (offset, size in bytes) of every field; tests/native/test_layout.py checks these against the C header.
CARD_FIELDS: dict[str, tuple[int, int]] = {
    "magic": (0, 4),
    "version": (4, 4),
    "seq": (8, 4),
    "contended": (12, 4),
    "grant": (16, 8),
    "deadline_ns": (24, 8),
    "daemon_pid_start": (32, 8),
    "ended_ns": (40, 8),
    "next_grant": (48, 8),
    "next_deadline_ns": (56, 8),
    "preempt": (64, 4),  # the preemptor's slot index + 1, 0: none (flexnpu_shm.h)
}
SLOT_FIELDS: dict[str, tuple[int, int]] = {
    "magic": (0, 4),
    "version": (4, 4),
    "slot_index": (8, 4),
    "card_index": (12, 4),
    "mem_cap_bytes": (16, 8),
    "mem_used_bytes": (24, 8),
    "used_ns": (32, 8),
    "inflight_est_ns": (40, 8),
    "want": (48, 4),
    "doorbell": (52, 4),
    "share_permille": (56, 4),
    "priority": (60, 4),
    "mem_peak_bytes": (64, 8),
    "denied_allocs": (72, 8),
    "yield_epoch": (80, 4),
    "yield_ns": (88, 8),
    "reclaimed_bytes": (96, 8),
    "excluded_ns": (104, 8),
}
# Arrays of u32 (offset, count): the tenant-measured latency histograms.
SLOT_ARRAYS: dict[str, tuple[int, int]] = {
    "handoff_hist": (128, HIST_BUCKETS),
    "acquire_hist": (640, HIST_BUCKETS),
    # of the hand-offs, those to the slot as the successor published ahead (the daemon out of the path)
    "successor_hist": (3200, HIST_BUCKETS),
}
# The memory ledger (tenant-written, libflexnpu's account.c): LEDGER_ENTRIES entries of LEDGER_ENTRY_SIZE bytes from
# LEDGER_OFFSET, one per process of the pod that holds device memory, each {u64 bytes; u32 pid; u32 pad}. A process
# owns entry i while it holds an open-file-description lock on byte LEDGER_LOCK_BASE + i of the slot file.
LEDGER_OFFSET = 1152
LEDGER_ENTRIES = 128
LEDGER_ENTRY_SIZE = 16
LEDGER_ENTRY_FIELDS: dict[str, tuple[int, int]] = {"bytes": (0, 8), "pid": (8, 4)}
LEDGER_LOCK_BASE = SHM_SIZE


def hist_bucket(us: int) -> int:
    """The histogram bucket of a latency in microseconds (``fx_hist_bucket`` in the C header)."""
    if us < 32:
        return max(0, us)
    octave = us.bit_length() - 1
    return min(HIST_BUCKETS - 1, 32 + (octave - 5) * 8 + ((us >> (octave - 3)) & 7))


def hist_bounds(bucket: int) -> tuple[int, int]:
    """[low, high) microseconds of a bucket (the last one's high is its low doubled: it is open-ended)."""
    if bucket < 32:
        return bucket, bucket + 1
    octave, sub = 5 + (bucket - 32) // 8, (bucket - 32) % 8
    low = (8 + sub) << (octave - 3)
    return low, (low * 2 if bucket == HIST_BUCKETS - 1 else low + (1 << (octave - 3)))


def hist_percentile(counts: list[int], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a histogram, as its bucket's upper bound in µs; None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for bucket, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return float(hist_bounds(bucket)[1])
    return float(hist_bounds(len(counts) - 1)[1])


_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # 128 = ID_MAX
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}


class ShmError(Exception):
    """A region or slot file that is missing, too small, or not of this protocol version."""


def slot_name(flexnpu_id: str) -> str:
    """``slot-<id>.shm``; an id that is not 1..128 of [A-Za-z0-9._-] (or starts with '.') is hashed (FNV-1a 64)."""
    if _SAFE_ID.fullmatch(flexnpu_id) and not flexnpu_id.startswith("."):
        return f"slot-{flexnpu_id}.shm"
    h = 0xCBF29CE484222325
    try:
        raw = flexnpu_id.encode("utf-8", "surrogateescape")  # the bytes an environment variable carried
    except UnicodeEncodeError:
        raw = flexnpu_id.encode("utf-8", "surrogatepass")  # a lone surrogate from JSON: hashed, never an error
    for byte in raw:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"slot-h{h:016x}.shm"


def card_name(card_index: int) -> str:
    return f"card-{card_index}.grant"


def pack_grant(epoch: int, holder: int) -> int:
    return ((epoch & 0xFFFFFFFF) << 32) | (holder & 0xFFFFFFFF)


def unpack_grant(grant: int) -> tuple[int, int]:
    """(epoch, holder_slot)."""
    return grant >> 32, grant & 0xFFFFFFFF


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class _Mapped:
    """A 4096-byte file mapped MAP_SHARED, with typed field access."""

    def __init__(self, path: str, fields: dict[str, tuple[int, int]], writable: bool) -> None:
        self.path = path
        self._fields = fields
        flags = os.O_RDWR if writable else os.O_RDONLY
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ShmError(f"{path}: not a regular file")
            if info.st_size < SHM_SIZE:
                raise ShmError(f"{path}: smaller than {SHM_SIZE} bytes")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._mm = mmap.mmap(fd, SHM_SIZE, access=access)
        finally:
            os.close(fd)
        self._address = self._base_address()
        # One ctypes view per field of a writable map, made once: a field access is then one attribute load (the
        # daemon reads and writes a few dozen fields per decision). Dropped at close, before the unmap.
        self._cells: dict[str, ctypes.c_uint32 | ctypes.c_uint64] = {}
        if self._address:
            for name, (offset, size) in fields.items():
                ctype = ctypes.c_uint32 if size == 4 else ctypes.c_uint64
                self._cells[name] = ctype.from_address(self._address + offset)

    def _base_address(self) -> int:
        """The mapping's address for ctypes and futexes; 0 for a read-only map (ctypes needs a writable buffer)."""
        try:
            anchor = ctypes.c_char.from_buffer(self._mm)
        except TypeError:
            return 0
        address = ctypes.addressof(anchor)
        del anchor
        return address

    def get(self, name: str) -> int:
        cell = self._cells.get(name)
        if cell is not None:
            return cell.value
        offset, size = self._fields[name]
        return int.from_bytes(self._mm[offset : offset + size], "little")

    def set(self, name: str, value: int) -> None:
        cell = self._cells.get(name)
        if cell is None:
            if name not in self._fields:
                raise KeyError(name)
            raise ShmError(f"{self.path}: mapped read-only")
        cell.value = value & (0xFFFFFFFF if isinstance(cell, ctypes.c_uint32) else 0xFFFFFFFFFFFFFFFF)

    def address(self, name: str) -> int:
        """The field's address in this process (0 for a read-only map): what a futex waits on."""
        return self._address + self._fields[name][0] if self._address else 0

    def futex_wake(self, name: str, count: int = 2**31 - 1) -> None:
        offset, size = self._fields[name]
        assert size == 4 and self._address
        _libc().syscall(_sys_futex(), ctypes.c_void_p(self._address + offset), _FUTEX_WAKE, count, None, None, 0)

    def futex_wait(self, name: str, expected: int, timeout_s: float) -> None:
        """Wait while the 4-byte field equals expected, for at most timeout_s (spurious wake-ups return early)."""
        offset, size = self._fields[name]
        assert size == 4
        if not self._address:  # a read-only map (a tenant's view of the card): no futex address; poll once
            return
        seconds = max(0.0, timeout_s)
        ts = (ctypes.c_long * 2)(int(seconds), int((seconds % 1) * 1e9))
        _libc().syscall(_sys_futex(), ctypes.c_void_p(self._address + offset), _FUTEX_WAIT, expected, ts, None, 0)

    def close(self) -> None:
        self._cells = {}
        self._address = 0
        self._mm.close()

    def __enter__(self) -> _Mapped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sys_futex() -> int:
    machine = platform.machine()
    if machine not in _SYS_FUTEX:
        raise ShmError(f"futex syscall number unknown for {machine}")
    return _SYS_FUTEX[machine]


def _create_file(path: str) -> None:
    """A zeroed 4096-byte file, created atomically (write to a temporary name, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crashed daemon with this pid (never opened: it may be anything)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, SHM_SIZE)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class CardView:
    """One consistent reading of a card region's grant and successor (``read_view``)."""

    grant: int
    deadline_ns: int
    next_grant: int
    next_deadline_ns: int


def read_view(get: Callable[[str], int], attempts: int = 1000) -> CardView | None:
    """The grant and the successor as one consistent reading (the fields through ``get``), or None while flexnpud
    writes a grant for longer than ``attempts`` tries: gate.c's ``read_card``, in the same order."""
    for _ in range(attempts):
        grant = get("grant")
        if unpack_grant(grant)[1] == PUBLISHING:
            continue
        deadline, next_deadline = get("deadline_ns"), get("next_deadline_ns")
        following = get("next_grant")
        if get("next_deadline_ns") == next_deadline and get("grant") == grant:
            return CardView(grant, deadline, following, next_deadline)
    return None


def holding(view: CardView, slot_index: int, yield_epoch: int, now_ns: int) -> tuple[int, int, int] | None:
    """(epoch, deadline_ns, began_ns) of the grant the slot ``slot_index`` holds at ``now_ns``, else None (pure):
    the current grant until its deadline, or the successor published ahead from that deadline to its own
    (``began_ns`` then that deadline, else 0); never an epoch the pod gave back (``yield_epoch``). gate.c's
    ``granted_at``."""
    epoch, holder = unpack_grant(view.grant)
    if holder == slot_index and now_ns < view.deadline_ns and epoch != yield_epoch:
        return epoch, view.deadline_ns, 0
    epoch, holder = unpack_grant(view.next_grant)
    if (
        view.next_deadline_ns
        and holder == slot_index
        and view.deadline_ns <= now_ns < view.next_deadline_ns
        and epoch != yield_epoch
    ):
        return epoch, view.next_deadline_ns, view.deadline_ns
    return None


@dataclass(frozen=True)
class GrantState:
    """What the card region says: who holds the card, until when."""

    seq: int
    epoch: int
    holder: int
    deadline_ns: int
    daemon_pid_start: int


class CardRegion(_Mapped):
    """``card-<index>.grant``: written by flexnpud only (``create`` maps it writable, ``open`` read-only)."""

    def __init__(self, path: str, writable: bool) -> None:
        super().__init__(path, CARD_FIELDS, writable)
        if self.get("magic") != CARD_MAGIC or self.get("version") != VERSION:
            self.close()
            raise ShmError(f"{path}: not a version-{VERSION} card grant region")

    @classmethod
    def create(cls, path: str, daemon_pid_start: int) -> CardRegion:
        """Create the region, or adopt the one a previous daemon left (tenants keep their mapping of that file:
        replacing it would leave them waiting on a region nobody writes). Either way nobody holds the card."""
        try:
            region = cls(path, writable=True)
        except (OSError, ShmError):
            _create_file(path)
            with _Mapped(path, CARD_FIELDS, writable=True) as raw:
                raw.set("version", VERSION)
                raw.set("grant", pack_grant(0, NO_HOLDER))
                raw.set("magic", CARD_MAGIC)
            region = cls(path, writable=True)
        region.set("daemon_pid_start", daemon_pid_start)
        region.revoke(region.state().epoch)
        return region

    @classmethod
    def open(cls, path: str) -> CardRegion:
        return cls(path, writable=False)

    def view(self) -> CardView | None:
        return read_view(self.get)

    def state(self) -> GrantState:
        epoch, holder = unpack_grant(self.get("grant"))
        return GrantState(self.get("seq"), epoch, holder, self.get("deadline_ns"), self.get("daemon_pid_start"))

    def publish(
        self, holder: int, epoch: int, deadline_ns: int, ended_ns: int | None = None, *, wake: bool = True
    ) -> None:
        """``holder`` holds the card until ``deadline_ns`` (NO_HOLDER: nobody); a published successor is withdrawn
        first. ``ended_ns`` (None leaves it): when the grant before it ended. Then seq + 1 and, with ``wake``, a
        wake of every waiter (a tenant sets want before it sleeps on seq, so one without want sleeps on nothing)."""
        self.set("next_deadline_ns", 0)
        self.set("grant", pack_grant(epoch, PUBLISHING))
        if ended_ns is not None:
            self.set("ended_ns", max(0, ended_ns))
        self.set("deadline_ns", max(0, deadline_ns))
        self.set("grant", pack_grant(epoch, holder))
        self._bump(wake)

    def publish_next(self, holder: int, epoch: int, deadline_ns: int, *, wake: bool = True) -> None:
        """``holder`` holds the card from the current grant's deadline until ``deadline_ns``, by itself."""
        self.set("next_deadline_ns", 0)
        self.set("next_grant", pack_grant(epoch, holder))
        self.set("next_deadline_ns", max(0, deadline_ns))
        self._bump(wake)

    def promote(self, *, wake: bool = True) -> bool:
        """The published successor becomes the grant (the same epoch and deadline; ``ended_ns`` the deadline it
        followed): its holder, running since that deadline, never sees the card as not its own. False when none."""
        deadline = self.get("next_deadline_ns")
        if not deadline:
            return False
        following = self.get("next_grant")
        self.set("grant", pack_grant(unpack_grant(following)[0], PUBLISHING))
        self.set("ended_ns", self.get("deadline_ns"))
        self.set("deadline_ns", deadline)
        self.set("grant", following)
        self.set("next_deadline_ns", 0)
        self._bump(wake)
        return True

    def revoke(self, epoch: int) -> None:
        """Nobody holds the card (deadline 0)."""
        self.publish(NO_HOLDER, epoch, 0)

    def _bump(self, wake: bool) -> None:
        self.set("seq", self.get("seq") + 1)
        if wake:
            self.futex_wake("seq")


@dataclass(frozen=True)
class SlotSnapshot:
    """A slot as read (tenant-written fields are the pod's word, unvalidated)."""

    slot_index: int
    card_index: int
    mem_cap_bytes: int
    mem_used_bytes: int
    used_ns: int
    inflight_est_ns: int
    want: int
    doorbell: int
    share_permille: int
    priority: int
    mem_peak_bytes: int
    denied_allocs: int
    yield_epoch: int = 0
    yield_ns: int = 0
    reclaimed_bytes: int = 0
    excluded_ns: int = 0


class Slot(_Mapped):
    """``slot-<id>.shm``: the daemon writes slot_index, card_index, mem_cap_bytes, share_permille, priority."""

    def __init__(self, path: str) -> None:
        super().__init__(path, SLOT_FIELDS, writable=True)
        if self.get("magic") != SLOT_MAGIC or self.get("version") != VERSION:
            self.close()
            raise ShmError(f"{path}: not a version-{VERSION} registration slot")

    @classmethod
    def create(
        cls, path: str, *, slot_index: int, card_index: int, mem_cap_bytes: int, share_permille: int, priority: int
    ) -> Slot:
        """Create the slot, or adopt an existing one (a daemon restart): the tenant fields stay, so the pod's
        memory account survives; the daemon fields are (re)written."""
        slot, _ = cls.adopt_or_create(path)
        slot.write_daemon_fields(
            slot_index=slot_index,
            card_index=card_index,
            mem_cap_bytes=mem_cap_bytes,
            share_permille=share_permille,
            priority=priority,
        )
        return slot

    @classmethod
    def adopt_or_create(cls, path: str) -> tuple[Slot, bool]:
        """The slot a previous daemon left at ``path``, opened in place (the same inode: a pod's bind mount and its
        processes' mappings pin that one), and True; or, when there is none or it is not a slot of this version (a
        symlink, which is never followed, a truncated file, a wrong magic), a zeroed one in its place, and False.
        The daemon fields are the caller's to write."""
        try:
            return cls(path), True
        except (OSError, ShmError):
            pass
        _create_file(path)
        with _Mapped(path, SLOT_FIELDS, writable=True) as raw:
            raw.set("version", VERSION)
            raw.set("magic", SLOT_MAGIC)
        return cls(path), False

    def write_daemon_fields(
        self, *, slot_index: int, card_index: int, mem_cap_bytes: int, share_permille: int, priority: int
    ) -> None:
        """The fields only flexnpud writes (clamped); ``yield_epoch`` back to 0: no epoch of this daemon's was
        given back yet (epochs restart with it)."""
        self.set("slot_index", slot_index)
        self.set("card_index", card_index)
        self.set("mem_cap_bytes", max(0, mem_cap_bytes))
        self.set("share_permille", min(1000, max(0, share_permille)))
        self.set("priority", min(2, max(0, priority)))
        self.set("yield_epoch", 0)

    @classmethod
    def open(cls, path: str) -> Slot:
        return cls(path)

    def snapshot(self) -> SlotSnapshot:
        return SlotSnapshot(**{name: self.get(name) for name in SLOT_FIELDS if name not in ("magic", "version")})

    def ledger(self) -> list[tuple[int, int]]:
        """The ledger's entries that hold memory, as (pid in the pod's namespace, bytes): the pod's own figures,
        unvalidated."""
        entries = []
        for i in range(LEDGER_ENTRIES):
            base = LEDGER_OFFSET + i * LEDGER_ENTRY_SIZE
            held = int.from_bytes(self._mm[base : base + 8], "little")
            if held:
                entries.append((int.from_bytes(self._mm[base + 8 : base + 12], "little"), held))
        return entries

    def histogram(self, name: str) -> list[int]:
        """One of ``SLOT_ARRAYS`` (the pod's own figures: unvalidated counts)."""
        offset, count = SLOT_ARRAYS[name]
        with memoryview(self._mm) as view, view[offset : offset + 4 * count] as part, part.cast("I") as words:
            return list(words)

    def wait_doorbell(self, seen: int, timeout_s: float) -> None:
        """Block until the doorbell moves past ``seen`` (or timeout_s)."""
        self.futex_wait("doorbell", seen, timeout_s)


def open_card(directory: str, card_index: int) -> CardRegion | None:
    """The card's region, or None when flexnpud has not created it (the tenant then paces locally)."""
    try:
        return CardRegion.open(os.path.join(directory, card_name(card_index)))
    except (OSError, ShmError):
        return None
