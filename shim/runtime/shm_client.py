"""The Python runtime's end of the shared-memory grant path: what libflexnpu's gate (shim/native/gate.c) does, for
the launch boundaries of the Python adapters (``slice()``, ``flexnpu shim run``, PyTorch, the simulated NPU).

flexnpud writes one card region per card and one slot per registration in the shim directory (the protocol:
``flexnpu.shim.grant.shm``, whose field names and offsets this module uses, never its own). This client:

- maps the registration's slot read-write and the card region read-only (libc ``mmap`` through ctypes: Python's
  ``mmap`` gives no address for a read-only map, and a futex needs one);
- holds the card while the grant word names its slot, the deadline has not passed and the pod has not given that
  epoch back (``yield_epoch``): a load of three words, no syscall, no lock;
- when it does not hold the card: sets ``want`` (the first 0 -> 1 bumps and wakes ``doorbell``), sleeps on the
  card region's ``seq`` futex until granted, clears ``want``; a launch within ``RENEW_US`` of the deadline sets
  ``want`` already (flexnpud decides at the deadline whether the holder still wants the card);
- adds the device time the slicer measured to ``used_ns`` at each report (flexnpud charges max(reported, held),
  so a report lost to a race between two processes of the pod gains the pod nothing);
- gives the grant back at the end of its work (``release`` without want, after the drain) while the card region
  says another tenant waits (``contended``): ``yield_ns``, ``yield_epoch``, a ring of the doorbell;
- treats its grant as revoked while the card's preemptor (``preempt``: another registration, of higher priority
  than every other) wants the card, reading that registration's slot read-only; it does not itself launch as a
  preemptor before its grant (libflexnpu does);
- paces itself locally at its share when there is no card region, or when ``seq`` did not move for
  ``DEAD_DAEMON_S`` while it waited (flexnpud gone), as the socket client does.

The socket stays for the hello: flexnpud checks the process's identity (SO_PEERCRED and its cgroup's pod) on the
grant socket before the runtime uses the slot; a refusal is an error, an unreachable socket is not (the daemon may
be restarting: the slot still gates). ``make_grants`` picks this client when the slot exists and the socket client
(``grant_client.GrantClient``) only where it does not: a flexnpud without its shared-memory grant path (no
``socket_dir``) or a card that has no region (chip index other than 0).

Standard library only: the runtime is loaded into every Python process of a pod.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import logging
import mmap
import os
import time
from typing import Callable, Optional, Union

from flexnpu.shim.grant import shm
from flexnpu.shim.runtime.grant_client import GrantClient, Lease

log = logging.getLogger("flexnpu.shim.runtime")

DEAD_DAEMON_S = 2.0  # no grant change for this long while waiting: flexnpud is gone, pace locally (gate.c too)
FUTEX_WAIT_S = 0.05
# A launch this close to the deadline sets want already (flexnpud renews a holder that wants at its deadline).
# Wider than libflexnpu's 1 ms: the slicer may block up to its in-flight cap (2 ms) waiting for the device between
# two launches, and a want first set after the deadline loses the card to the next tenant for a whole slice.
RENEW_US = 3000
PROBE_S = 1.0  # without a card region: look for one this often
DEFAULT_LOCAL_SLICE_US = 2000
MAX_INFLIGHT_US = 1000  # short, as the grant server's run-ahead on a shared card
MIN_INFLIGHT_US = 100
_MAP_FAILED = ctypes.c_void_p(-1).value


class _CardView:
    """The card region mapped PROT_READ, MAP_SHARED through libc: field loads and futex waits at its address (with
    ``fields`` and ``magic`` of a slot: another registration's slot, read-only)."""

    def __init__(
        self, path: str, fields: dict[str, tuple[int, int]] = shm.CARD_FIELDS, magic: int = shm.CARD_MAGIC
    ) -> None:
        self.path = path
        self._fields = fields
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._libc = libc
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size < shm.SHM_SIZE:
                raise shm.ShmError(f"{path}: smaller than {shm.SHM_SIZE} bytes")
            address = libc.mmap(None, shm.SHM_SIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)
        if address in (None, _MAP_FAILED):
            code = ctypes.get_errno() or errno_module.ENOMEM
            raise OSError(code, f"mmap {path}: {os.strerror(code)}")
        self._address: int = address
        if self.get("magic") != magic or self.get("version") != shm.VERSION:
            self.close()
            raise shm.ShmError(f"{path}: not a version-{shm.VERSION} region of its kind")

    def get(self, name: str) -> int:
        offset, size = self._fields[name]
        ctype = ctypes.c_uint32 if size == 4 else ctypes.c_uint64
        return int(ctype.from_address(self._address + offset).value)

    def wait(self, name: str, expected: int, timeout_s: float) -> None:
        """FUTEX_WAIT on the 4-byte field while it equals ``expected``, for at most timeout_s."""
        offset, size = self._fields[name]
        assert size == 4
        seconds = max(0.0, timeout_s)
        ts = (ctypes.c_long * 2)(int(seconds), int((seconds % 1) * 1e9))
        self._libc.syscall(shm._sys_futex(), ctypes.c_void_p(self._address + offset), 0, expected, ts, None, 0)

    def close(self) -> None:
        if self._address:
            self._libc.munmap(ctypes.c_void_p(self._address), shm.SHM_SIZE)
            self._address = 0


class ShmGrantClient:
    """One process's use of registration ``flexnpu_id``'s slot; the Slicer's grant source (as ``GrantClient``)."""

    def __init__(
        self,
        shim_dir: str,
        flexnpu_id: str,
        socket_path: str,
        fallback_share: float,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        local_slice_us: int = DEFAULT_LOCAL_SLICE_US,
        slot_id: str = "",
    ) -> None:
        """Maps the slot of ``slot_id`` (default ``flexnpu_id``, the id the hello presents); OSError or
        shm.ShmError when there is none (then use the socket client)."""
        self.shim_dir = shim_dir
        self.flexnpu_id = flexnpu_id
        self.slot = shm.Slot.open(os.path.join(shim_dir, shm.slot_name(slot_id or flexnpu_id)))
        self.share = min(1.0, max(0.01, fallback_share))
        self.local_slice_us = local_slice_us
        self.hello = GrantClient(socket_path, flexnpu_id, fallback_share)
        self._clock_ns = clock_ns
        self._card: Optional[_CardView] = None
        # (card.preempt it was looked up for, the preemptor's slot read-only or None): found again when it changes
        self._preemptor: Optional[tuple[int, Optional[_CardView]]] = None
        self._next_probe_ns = 0
        self._dead_seq: Optional[int] = None
        self._said_hello = False
        self._next_hello_ns = 0
        self._lease: Optional[Lease] = None
        self._epoch = -1
        self._early_want = False
        self._local_not_before_ns = 0
        self.waits = 0
        self.yields = 0
        self._probe_card()

    @property
    def connected(self) -> bool:
        """True while flexnpud's card region is there and answers (grants come from it, not from local pacing)."""
        return self._card is not None and self._dead_seq is None

    @property
    def slot_index(self) -> int:
        return self.slot.get("slot_index")

    # ----- what the Slicer calls ---------------------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Block until this registration holds the card; the lease lasts until the grant's deadline."""
        self._say_hello()
        card = self._probe_card()
        if card is None:
            return self._local_lease()
        if self._granted(card, self._clock_ns()) is None:
            if self._dead_seq is not None and card.get("seq") == self._dead_seq:
                return self._local_lease()  # flexnpud went quiet and still is: no 2 s wait per acquire
            self._dead_seq = None
            if not self._wait_for_grant(card):
                return self._local_lease()
        self.slot.set("want", 0)
        self._early_want = False
        return self._take(card)

    def revoked(self) -> bool:
        """At a launch boundary: True when the card is no longer ours (deadline, new holder, or given back)."""
        lease, card = self._lease, self._card
        if lease is None or lease.local or card is None:
            return False
        now = self._clock_ns()
        grant = self._granted(card, now)
        if grant is None:
            return True  # (a renewal under a new epoch is still ours: no drain; the next extend takes it)
        if not self._early_want and grant[1] - now < RENEW_US * 1000 and self.slot.get("want") == 0:
            self._early_want = True
            self._want()  # launching in the grant's last moments: it will want the card after it too
        return False

    def extend(self, used_us: int) -> Optional[Lease]:
        """The lease's budget is spent: report; a lease on the grant in force when it is (still, or renewed) ours."""
        self._report(used_us)
        card = self._card
        if self._lease is None or self._lease.local or card is None:
            return None
        grant = self._granted(card, self._clock_ns())
        if grant is None:
            return None
        if grant[0] != self._epoch:  # renewed at the deadline (the early want was heard): that want is answered
            self.slot.set("want", 0)
            self._early_want = False
        return self._take(card)

    def release(self, used_us: int, want: bool = False, ops_used: int = 0) -> None:
        """The lease ended after ``used_us`` of device time, its work drained; ``want``: the next one is wanted."""
        lease, self._lease = self._lease, None
        self._report(used_us)
        if lease is not None and lease.local:
            self._local_not_before_ns = self._clock_ns() + int(used_us * (1.0 - self.share) / self.share * 1000)
            return
        if want:
            self._want()
            return
        if self._early_want or self.slot.get("want") == 1:
            self.slot.set("want", 0)  # finished: an early want would have the idle tenant renewed and charged
        self._early_want = False
        if lease is not None:
            self._maybe_yield()

    def close(self) -> None:
        if self._lease is not None:
            self.release(0)
        self.hello.close()
        if self._card is not None:
            self._card.close()
            self._card = None
        if self._preemptor is not None and self._preemptor[1] is not None:
            self._preemptor[1].close()
        self._preemptor = None
        self.slot.close()

    # ----- internals -------------------------------------------------------------------------------------------

    def _say_hello(self) -> None:
        """The identity check on the grant socket, once (GrantRefusedError when flexnpud refuses this process);
        while nobody listens, tried again at most every PROBE_S."""
        now = self._clock_ns()
        if not self._said_hello and now >= self._next_hello_ns:
            self._next_hello_ns = now + int(PROBE_S * 1e9)
            self._said_hello = self.hello.connect()

    def _probe_card(self) -> Optional[_CardView]:
        if self._card is not None:
            return self._card
        now = self._clock_ns()
        if now < self._next_probe_ns:
            return None
        self._next_probe_ns = now + int(PROBE_S * 1e9)
        try:
            self._card = _CardView(os.path.join(self.shim_dir, shm.card_name(self.slot.get("card_index"))))
        except (OSError, shm.ShmError):
            log.warning("flexnpu: no grant region from flexnpud: pacing locally at share %.2f", self.share)
        return self._card

    def _granted(self, card: _CardView, now_ns: int) -> Optional[tuple[int, int]]:
        """(epoch, deadline_ns) when this registration holds the card now (its grant, or the successor published
        ahead once the grant before it ended), else None."""
        view = shm.read_view(card.get)
        held = (
            None
            if view is None
            else shm.holding(view, self.slot.get("slot_index"), self.slot.get("yield_epoch"), now_ns)
        )
        return None if held is None or self._preempted(card) else (held[0], held[1])

    def _preempted(self, card: _CardView) -> bool:
        """Whether the card's preemptor, another registration, wants the card now (its slot's ``want``)."""
        key = card.get("preempt")
        if not key or key == self.slot.get("slot_index") + 1:
            return False
        if self._preemptor is None or self._preemptor[0] != key:
            if self._preemptor is not None and self._preemptor[1] is not None:
                self._preemptor[1].close()
            self._preemptor = (key, self._find_slot(key - 1, self.slot.get("card_index")))
        view = self._preemptor[1]
        return view is not None and view.get("want") == 1

    def _find_slot(self, index: int, card_index: int) -> Optional[_CardView]:
        """The slot of this card whose ``slot_index`` is ``index``, mapped read-only; None when there is none."""
        try:
            names = sorted(n for n in os.listdir(self.shim_dir) if n.startswith("slot-") and n.endswith(".shm"))
        except OSError:
            return None
        for name in names:
            try:
                view = _CardView(os.path.join(self.shim_dir, name), shm.SLOT_FIELDS, shm.SLOT_MAGIC)
            except (OSError, shm.ShmError):
                continue
            if view.get("slot_index") == index and view.get("card_index") == card_index:
                return view
            view.close()
        return None

    def _successor_starts(self, card: _CardView, now_ns: int) -> int:
        """When this registration's published successor grant begins, if it has not yet; else 0."""
        view = shm.read_view(card.get)
        if view is None or not view.next_deadline_ns or view.deadline_ns <= now_ns:
            return 0
        return view.deadline_ns if shm.unpack_grant(view.next_grant)[1] == self.slot.get("slot_index") else 0

    def _wait_for_grant(self, card: _CardView) -> bool:
        """Want the card and sleep on ``seq`` until it is ours (True) or flexnpud went quiet (False)."""
        self.waits += 1
        self._early_want = False
        self._want()
        seq, since = card.get("seq"), self._clock_ns()
        while self._granted(card, self._clock_ns()) is None:
            now_seq = card.get("seq")
            if now_seq != seq:
                seq, since = now_seq, self._clock_ns()
                self._want()  # a new decision without us: still wanting (the daemon may have dropped the wish)
                continue
            if self._clock_ns() - since > DEAD_DAEMON_S * 1e9:
                log.warning("flexnpu: flexnpud does not answer (no grant change for 2 s): pacing locally")
                self._dead_seq = seq
                return False
            starts = self._successor_starts(card, self._clock_ns())
            card.wait("seq", seq, FUTEX_WAIT_S if not starts else max(0.0, (starts - self._clock_ns()) / 1e9))
        return True

    def _take(self, card: _CardView) -> Lease:
        now = self._clock_ns()
        grant = self._granted(card, now)
        epoch, deadline = grant if grant is not None else (self._epoch, now)
        self._epoch = epoch
        left_us = max(1, (deadline - now) // 1000)
        # Run-ahead no longer than the time left (as gate.c caps in-flight work): what the device runs after the
        # deadline is the next holder's time.
        self._lease = Lease(epoch, left_us, inflight_us=max(MIN_INFLIGHT_US, min(MAX_INFLIGHT_US, left_us)))
        return self._lease

    def _local_lease(self) -> Lease:
        delay_ns = self._local_not_before_ns - self._clock_ns()
        if delay_ns > 0:
            time.sleep(delay_ns / 1e9)
        self._lease = Lease(0, self.local_slice_us, None, local=True)
        return self._lease

    def _want(self) -> None:
        if self.slot.get("want") != 1:
            self.slot.set("want", 1)
            self._ring()

    def _ring(self) -> None:
        self.slot.set("doorbell", self.slot.get("doorbell") + 1)
        self.slot.futex_wake("doorbell")

    def report(self, used_us: int) -> None:
        """Device time known done within the lease (the slicer calls it as work completes, not only at the end)."""
        self._report(used_us)

    def _report(self, used_us: int) -> None:
        """Add measured device time to the slot (a load and a store: a race with another process of the pod can
        lose a report, never add one)."""
        if used_us > 0:
            self.slot.set("used_ns", self.slot.get("used_ns") + int(used_us) * 1000)

    def _maybe_yield(self) -> None:
        """Nothing in flight (drained) and another tenant waits: give the grant back now, not at its deadline."""
        card = self._card
        if card is None or self._dead_seq is not None or not card.get("contended"):
            return
        grant = self._granted(card, self._clock_ns())
        if grant is None:
            return
        self.slot.set("yield_ns", self._clock_ns())
        self.slot.set("yield_epoch", grant[0])
        self.yields += 1
        self._ring()


def make_grants(
    shim_dir: str, flexnpu_id: str, socket_path: str, share: float, slot_id: str = ""
) -> Union[GrantClient, ShmGrantClient]:
    """The shared-memory client when flexnpud made this registration's slot, else the socket client."""
    try:
        return ShmGrantClient(shim_dir, flexnpu_id, socket_path, share, slot_id=slot_id)
    except (OSError, shm.ShmError):
        log.info("flexnpu: no slot for %s in %s: grants over the socket %s", flexnpu_id, shim_dir, socket_path)
        return GrantClient(socket_path, flexnpu_id, share)
