"""flexnpud's wake-up on the tenants' doorbells: one thread asleep on every slot's doorbell at once.

A tenant's libflexnpu bumps its slot's ``doorbell`` and FUTEX_WAKEs it when it starts to wait for the card (want
0 -> 1) and when it gives a grant back (the yield, ``flexnpu.shim.grant.shm``). One thread sleeps in
``futex_waitv`` (Linux 5.16+, syscall 449; through ctypes, which releases the GIL while it sleeps) on the
doorbells of up to 127 slots plus a word of its own (what ``watch`` and ``stop`` ring); when it wakes it reads
which doorbells moved and hands their registrations to the callback, which reads those slots and decides. A
thread per slot was tried and was worse on a loaded 2-core machine: this is one thread, one wake-up per ring.

A doorbell is the pod's to ring, so a flood of rings must not burn the daemon's CPU: every slot has a token bucket
(``RingBudget``: ``burst`` rings at once, ``rate_per_s`` sustained). A ring that finds the bucket empty is not
handled, and the slot's doorbell is left out of the wait until the bucket has a token again: the flood then costs
the daemon nothing at all (nobody sleeps on that word). Its wants are still seen by the grant server's slot poll,
which asks ``unwatched`` for such slots (and those past the first 127, also left to it) every few slices and reads
every slot only at a slower sweep. Without futex_waitv (an older kernel, another architecture) the thread does not
start and the poll reads every slot every few slices.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

SYS_FUTEX_WAITV = {"x86_64": 449, "aarch64": 449, "arm64": 449}
SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}
FUTEX2_SIZE_U32 = 0x02
FUTEX2_PRIVATE = 128
FUTEX_WAKE_PRIVATE = 1 | 128
FUTEX_WAITV_MAX = 128
CLOCK_MONOTONIC = 1
# Rings handled per slot: an honest tenant rings about twice per grant (its want, its yield).
RING_BURST = 64
RING_RATE_PER_S = 2000.0


class _Waiter(ctypes.Structure):
    _fields_ = (
        ("val", ctypes.c_uint64),
        ("uaddr", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    )


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


@dataclass(frozen=True)
class RingBudget:
    """A slot's token bucket (pure): ``tokens`` left at ``at_ns``."""

    tokens: float
    at_ns: int

    def refilled(self, now_ns: int, rate_per_s: float, burst: int) -> RingBudget:
        gained = max(0, now_ns - self.at_ns) * rate_per_s / 1e9
        return RingBudget(min(float(burst), self.tokens + gained), max(now_ns, self.at_ns))

    def spend(self, now_ns: int, rate_per_s: float, burst: int) -> tuple[RingBudget, bool]:
        """The bucket after one ring at ``now_ns``, and whether that ring is handled."""
        full = self.refilled(now_ns, rate_per_s, burst)
        if full.tokens >= 1.0:
            return RingBudget(full.tokens - 1.0, full.at_ns), True
        return full, False

    def ready_at_ns(self, rate_per_s: float) -> int:
        """When the bucket holds one token again (now or in the past when it holds one)."""
        if self.tokens >= 1.0:
            return self.at_ns
        return self.at_ns + int((1.0 - self.tokens) * 1e9 / rate_per_s) + 1


def available() -> bool:
    """True when this kernel has futex_waitv (the thread can run)."""
    number = SYS_FUTEX_WAITV.get(platform.machine())
    if number is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ts = _Timespec(0, 0)  # an absolute timeout in the past: returns at once, ETIMEDOUT when the call exists
    result = libc.syscall(ctypes.c_long(number), None, ctypes.c_uint(0), ctypes.c_uint(0), ctypes.byref(ts), 1)
    return not (result == -1 and ctypes.get_errno() == 38)  # ENOSYS


@dataclass
class _Bell:
    address: int
    seen: int
    budget: RingBudget
    handled: int = 0
    dropped: int = 0


class Doorbells:
    """The thread asleep on the slots' doorbells; ``on_ring(ids, woke)`` runs in it for each wake-up that found
    rings (``woke``: ``stamp()`` when the thread woke, before it took any lock: when the rings were seen; the
    grant server passes its own clock).

    ``add`` and ``forget`` (the caller forgets a slot before it unmaps it: after ``forget`` returns the thread never
    reads that address again) may be called from any thread.
    """

    def __init__(
        self,
        on_ring: Callable[[Sequence[str], int], None],
        *,
        rate_per_s: float = RING_RATE_PER_S,
        burst: int = RING_BURST,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        stamp: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._on_ring = on_ring
        self._stamp = stamp
        self.on_start: Callable[[], None] | None = None  # run first in the thread (the server sets its priority)
        self._rate, self._burst = rate_per_s, burst
        self._clock = clock_ns
        self._bells: dict[str, _Bell] = {}
        self._lock = threading.Lock()
        self._control = ctypes.c_uint32(0)
        self._waiters = (_Waiter * FUTEX_WAITV_MAX)()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._skipped: frozenset[str] = frozenset()  # left out of the last wait (out of budget, past the 127)
        self._dropped: set[str] = set()  # rang past their budget since the last ``unwatched``
        self._machine = platform.machine()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    # ----- the API ------------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the thread; False (and a log line) when this kernel cannot (the slot poll then does it all)."""
        if not available():
            log.info("grant path: no futex_waitv on this kernel; wants and yields are seen at the slot poll")
            return False
        self._thread = threading.Thread(target=self._run, name="grant-doorbells", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._ring_control()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, flexnpu_id: str, address: int) -> None:
        """Watch the doorbell at ``address`` (a 4-byte word of a MAP_SHARED slot) for ``flexnpu_id``."""
        if not address:
            return
        with self._lock:
            seen = ctypes.c_uint32.from_address(address).value
            self._bells[flexnpu_id] = _Bell(address, seen, RingBudget(float(self._burst), self._clock()))
        self._ring_control()

    def forget(self, flexnpu_id: str) -> None:
        with self._lock:
            self._bells.pop(flexnpu_id, None)
        self._ring_control()

    @property
    def running(self) -> bool:
        """Whether the thread runs (``start`` found futex_waitv): only then does a ring reach ``on_ring``."""
        return self._thread is not None and self._thread.is_alive()

    def unwatched(self) -> frozenset[str]:
        """The slots whose rings this thread may have missed: left out of its last wait (out of budget, past the
        first 127) or rung past their budget since the last call. The caller reads them itself."""
        with self._lock:
            missed = self._skipped | self._dropped
            self._dropped = set()
            return missed

    def counts(self, flexnpu_id: str) -> tuple[int, int]:
        """(rings handled, rings dropped at the budget) for a slot, for tests and metrics."""
        with self._lock:
            bell = self._bells.get(flexnpu_id)
            return (0, 0) if bell is None else (bell.handled, bell.dropped)

    # ----- the thread ---------------------------------------------------------------------------------------

    def _ring_control(self) -> None:
        with self._lock:
            self._control.value = (self._control.value + 1) & 0xFFFFFFFF
        number = SYS_FUTEX.get(self._machine)
        if number is not None:
            self._libc.syscall(ctypes.c_long(number), ctypes.byref(self._control), FUTEX_WAKE_PRIVATE, 1, None, None, 0)

    def _prepare(self) -> tuple[ctypes.Array[_Waiter], int, int | None] | None:
        """The wait list (control word first), its length, and the absolute wake-up time (a bucket refills)."""
        with self._lock:
            if self._stopping:
                return None
            now = self._clock()
            waiters = self._waiters  # one array, rewritten in place: only this thread uses it
            waiters[0].val, waiters[0].uaddr = self._control.value, ctypes.addressof(self._control)
            waiters[0].flags = FUTEX2_SIZE_U32 | FUTEX2_PRIVATE
            count, wake_at = 1, None
            skipped = []
            for flexnpu_id, bell in self._bells.items():
                if count == FUTEX_WAITV_MAX:
                    skipped.append(flexnpu_id)
                    continue
                if bell.budget.tokens < 1.0:
                    ready = bell.budget.refilled(now, self._rate, self._burst).ready_at_ns(self._rate)
                    if ready > now:  # out of budget: not waited on (its flood wakes nobody) until it refills
                        wake_at = ready if wake_at is None else min(wake_at, ready)
                        skipped.append(flexnpu_id)
                        continue
                entry = waiters[count]
                entry.val, entry.uaddr, entry.flags = bell.seen, bell.address, FUTEX2_SIZE_U32
                count += 1
            self._skipped = frozenset(skipped)
            return waiters, count, wake_at

    def _collect(self) -> list[str]:
        """The slots whose doorbell moved since last seen and that had budget for it."""
        rung = []
        with self._lock:
            now = self._clock()
            for flexnpu_id, bell in self._bells.items():
                value = ctypes.c_uint32.from_address(bell.address).value
                if value == bell.seen:
                    continue
                bell.seen = value
                bell.budget, handled = bell.budget.spend(now, self._rate, self._burst)
                if handled:
                    bell.handled += 1
                    rung.append(flexnpu_id)
                else:
                    bell.dropped += 1
                    self._dropped.add(flexnpu_id)
        return rung

    def _run(self) -> None:
        if self.on_start is not None:
            self.on_start()
        number = SYS_FUTEX_WAITV[self._machine]
        while True:
            prepared = self._prepare()
            if prepared is None:
                return
            waiters, count, wake_at = prepared
            timeout = None
            if wake_at is not None:
                timeout = _Timespec(wake_at // 1_000_000_000, wake_at % 1_000_000_000)
            self._libc.syscall(
                ctypes.c_long(number),
                waiters,
                ctypes.c_uint(count),
                ctypes.c_uint(0),
                None if timeout is None else ctypes.byref(timeout),
                CLOCK_MONOTONIC,
            )
            woke = self._stamp()
            rung = self._collect()
            if rung:
                try:
                    self._on_ring(rung, woke)
                except Exception:  # a bug in the handler must not stop the wake-ups; the poll still runs
                    log.exception("grant path: handling doorbell rings failed")
