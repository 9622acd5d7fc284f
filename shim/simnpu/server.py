"""The simulated NPU in real time: separate processes share its cards through one unix socket.

Each card has ONE engine thread that runs the kernels of every context non-preemptively, one at a time, in
arrival order; contexts queue kernels asynchronously (``launch`` has no reply, ``sync`` waits). Memory has a
capacity per card and an optional cap per context; an allocation past either fails for that context only.

Accounting is ground truth and independent of any scheduler: a kernel starts at max(its arrival, the end of the
previous kernel) on a logical timeline and keeps the engine busy exactly its duration, so a late wake-up of the
engine thread (Python sleeps overshoot by ~50-100 µs here) delays the notification, never the accounted busy
time. The engine waits with a sleep for the bulk and a yielding spin for the last stretch to stay close to real
time. The simulator knows nothing about shares: what it reports is what the card did.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

from flexnpu.cards import CardModel
from flexnpu.shim.core.simdevice import CompletedKernel, DeviceError, SimDevice, SimDeviceOutOfMemoryError
from flexnpu.shim.grant.unixserver import Credentials, Limits, UnixServer, credentials_of
from flexnpu.shim.runtime.wire import LineSocket, Message, WireError

log = logging.getLogger(__name__)

SPIN_US = 150
MAX_KERNEL_US = 10_000_000
MIB = 1 << 20
# Processes of the benchmarks and tests at once (each opens one connection per card it uses).
LIMITS = Limits(max_connections=256, max_per_peer=64)


class SimNpuRequestError(Exception):
    """A context sent a request the simulated NPU refuses; the message goes back to that context only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    """One connected process on one card: its launch count, memory handles and pending synchronizations."""

    key: str
    name: str
    conn: LineSocket
    cap_bytes: int | None
    launched: int = 0
    done: int = 0
    pending_waits: list[int] = field(default_factory=list)
    sticky_error: str = ""
    # Device time of its finished kernels as the device timed them (start to end on the engine): what a pair of
    # events around them measures on a real card. Sync replies carry it, so the runtime meters by the device.
    done_busy_us: int = 0
    handles: dict[int, int] = field(default_factory=dict)
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, message: Message) -> None:
        # a closed connection is noticed and cleaned up by the reader thread
        with self.send_lock, contextlib.suppress(WireError):
            self.conn.send(message)


class SimCard:
    """One card: the pure ``SimDevice`` model driven in real time by one engine thread."""

    def __init__(self, index: int, model: CardModel, clock_us: _Clock, stopping: threading.Event) -> None:
        self.index = index
        self.capacity_mib = model.hbm_mib
        self.device = SimDevice(model.hbm_mib * MIB)
        self.cond = threading.Condition()
        self._contexts: dict[str, Context] = {}
        self._names: dict[str, list[str]] = {}
        self._peak_mib: dict[str, int] = {}
        self._clock_us = clock_us
        self._stopping = stopping
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._engine, name=f"simnpu-engine-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self._thread.join()

    def open(self, name: str, conn: LineSocket, cap_mib: int | None) -> Context:
        with self.cond:
            cap = None if cap_mib is None else cap_mib * MIB
            context = Context(key=f"{name}#{next(self._ids)}", name=name, conn=conn, cap_bytes=cap)
            self.device.add_client(context.key, cap)
            self._contexts[context.key] = context
            self._names.setdefault(name, []).append(context.key)
            return context

    def submit(self, context: Context, durations_us: list[int]) -> None:
        with self.cond:
            idle = self.device.next_completion_us() is None
            now = self._now()
            for duration in durations_us:
                self.device.submit(context.key, duration, now)
            context.launched += len(durations_us)
            if idle:
                self.cond.notify()

    def wait_done(self, context: Context, upto: int | None) -> bool:
        """True when ``upto`` kernels of the context (all when None) have finished; else the engine replies later."""
        with self.cond:
            self._collect(self.device.advance(self._now()))
            target = context.launched if upto is None else min(upto, context.launched)
            if context.done >= target:
                return True
            context.pending_waits.append(target)
            return False

    def allocate(self, context: Context, mib: int) -> int:
        with self.cond:
            try:
                self.device.alloc(context.key, mib * MIB)
            except SimDeviceOutOfMemoryError as exc:
                limit = "this process's cap" if exc.limit == context.cap_bytes else f"card {self.index}'s memory"
                raise SimNpuRequestError(
                    "oom",
                    f"out of device memory: {mib} MiB more would pass {limit} of "
                    f"{exc.limit // MIB} MiB ({exc.used // MIB} MiB in use by this "
                    f"process)",
                ) from exc
            except DeviceError as exc:
                raise SimNpuRequestError("bad_size", str(exc)) from exc
            handle = next(self._ids)
            context.handles[handle] = mib
            self._track_peak(context.name)
            return handle

    def free(self, context: Context, handle: int) -> None:
        with self.cond:
            mib = context.handles.pop(handle, None)
            if mib is None:
                raise SimNpuRequestError("bad_handle", f"no allocation with handle {handle} in this context")
            self.device.free(context.key, mib * MIB)

    def release_context(self, context: Context) -> None:
        """A process went away: its memory returns to the card, its queued kernels still run (as on a card)."""
        with self.cond:
            self.device.remove_client(context.key)
            context.handles.clear()

    def snapshot(self) -> tuple[float, dict[str, dict[str, float]]]:
        """Ground truth by context name (processes of one name add up): busy_us, kernels, memory_mib."""
        with self.cond:
            now = self._now()
            self._collect(self.device.advance(now))
            return now, {name: self._figures(name, keys) for name, keys in self._names.items()}

    def _figures(self, name: str, keys: list[str]) -> dict[str, float]:
        return {
            "busy_us": float(sum(self.device.busy_us(k) for k in keys)),
            "kernels": float(sum(self._contexts[k].done for k in keys)),
            "memory_mib": float(sum(self.device.memory_used(k) for k in keys) // MIB),
            "peak_memory_mib": float(self._peak_mib.get(name, 0)),
        }

    def _track_peak(self, name: str) -> None:
        used = sum(self.device.memory_used(k) for k in self._names[name]) // MIB
        self._peak_mib[name] = max(self._peak_mib.get(name, 0), used)

    def _now(self) -> int:
        return int(self._clock_us())

    def _engine(self) -> None:
        with self.cond:
            while not self._stopping.is_set():
                self._collect(self.device.advance(self._now()))
                due = self.device.next_completion_us()
                if due is None:
                    self.cond.wait()
                    continue
                remaining = due - self._now()
                if remaining > SPIN_US:
                    self.cond.wait((remaining - SPIN_US) / 1e6)
                elif remaining > 0:
                    self.cond.release()
                    try:
                        time.sleep(0)  # yields the GIL so the socket threads keep serving while we spin
                    finally:
                        self.cond.acquire()

    def _collect(self, finished: list[CompletedKernel]) -> None:
        """Count finished kernels per context and answer the synchronizations they satisfy (lock held)."""
        for kernel in finished:
            context = self._contexts[kernel.client]
            context.done += 1
            context.done_busy_us += kernel.finished_us - kernel.started_us
            if context.pending_waits and context.pending_waits[0] <= context.done:
                ready = [t for t in context.pending_waits if t <= context.done]
                context.pending_waits = [t for t in context.pending_waits if t > context.done]
                for _ in ready:
                    context.reply(_sync_reply(context))


class _Clock:
    """Microseconds on the monotonic clock since the server started."""

    def __init__(self) -> None:
        self._origin = time.perf_counter()

    def __call__(self) -> float:
        return (time.perf_counter() - self._origin) * 1e6


def _sync_reply(context: Context) -> Message:
    if context.sticky_error:
        message, context.sticky_error = context.sticky_error, ""
        return {"ok": False, "error": "bad_launch", "message": message}
    return {"ok": True, "done": context.done, "busy_us": context.done_busy_us}


class SimNpuServer:
    """``cards`` simulated cards of ``model`` behind the unix socket ``socket_path``; start() then stop()."""

    def __init__(self, socket_path: str, model: CardModel, cards: int = 1) -> None:
        self.socket_path = socket_path
        self.model = model
        self._stopping = threading.Event()
        self._clock = _Clock()
        self.cards = [SimCard(i, model, self._clock, self._stopping) for i in range(cards)]
        self._server: UnixServer[Credentials] = UnixServer(
            socket_path, self._serve, credentials_of, name="simnpu", limits=LIMITS
        )

    def start(self) -> None:
        """Listen on the socket and run the engines; returns once clients can connect."""
        for card in self.cards:
            card.start()
        self._server.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()
        for card in self.cards:
            card.join()

    def __enter__(self) -> SimNpuServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, sock: socket.socket, _peer: Credentials) -> None:
        conn = LineSocket(sock)
        context: Context | None = None
        card: SimCard | None = None
        try:
            opened = conn.receive()
            context, card = self._open(conn, opened)
            conn.send({"ok": True, "capacity_mib": card.capacity_mib, "card": card.index})
            while True:
                self._handle(card, context, conn.receive())
        except SimNpuRequestError as exc:
            _try_send(conn, {"ok": False, "error": exc.code, "message": str(exc)})
        except (WireError, OSError):
            pass
        finally:
            if context is not None and card is not None:
                card.release_context(context)

    def _open(self, conn: LineSocket, message: Message) -> tuple[Context, SimCard]:
        if message.get("op") != "open":
            raise SimNpuRequestError("protocol", "the first message must be 'open'")
        index = message.get("card", 0)
        if not isinstance(index, int) or not 0 <= index < len(self.cards):
            raise SimNpuRequestError("bad_card", f"no card {index!r} (this simulator has {len(self.cards)})")
        cap = message.get("cap_mib")
        if cap is not None and (not isinstance(cap, int) or cap < 0):
            raise SimNpuRequestError("bad_cap", f"cap_mib must be a non-negative integer, not {cap!r}")
        card = self.cards[index]
        return card.open(str(message.get("name") or "anonymous"), conn, cap), card

    def _handle(self, card: SimCard, context: Context, message: Message) -> None:
        op = message.get("op")
        if op == "launch":
            self._launch(card, context, message.get("us"))
        elif op == "sync":
            upto = message.get("upto")
            if card.wait_done(context, upto if isinstance(upto, int) else None):
                context.reply(_sync_reply(context))
        elif op == "alloc":
            self._reply_or_error(context, lambda: {"ok": True, "handle": card.allocate(context, _mib(message))})
        elif op == "free":
            self._reply_or_error(context, lambda: _freed(card, context, message.get("handle")))
        elif op == "stats":
            now_us, clients = card.snapshot()
            context.reply(
                {
                    "ok": True,
                    "now_us": now_us,
                    "card": card.index,
                    "clients": clients,
                    "memory_used_mib": card.device.memory_in_use() // MIB,
                    "capacity_mib": card.capacity_mib,
                }
            )
        else:
            context.reply({"ok": False, "error": "protocol", "message": f"unknown op {op!r}"})

    def _launch(self, card: SimCard, context: Context, raw: object) -> None:
        durations = raw if isinstance(raw, list) else [raw]
        valid = [max(1, round(d)) for d in durations if _valid_duration(d)]
        if len(valid) != len(durations):
            # launch has no reply: like an NPU stream, the error is sticky and surfaces at the next sync
            context.sticky_error = f"kernel durations must be in (0, {MAX_KERNEL_US:.0f}] µs, got {raw!r}"
        if valid:
            card.submit(context, valid)

    @staticmethod
    def _reply_or_error(context: Context, build: Callable[[], Message]) -> None:
        try:
            context.reply(build())
        except SimNpuRequestError as exc:
            context.reply({"ok": False, "error": exc.code, "message": str(exc)})


def _valid_duration(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_KERNEL_US


def _mib(message: Message) -> int:
    mib = message.get("mib")
    if not isinstance(mib, int) or isinstance(mib, bool) or mib < 0:
        raise SimNpuRequestError("bad_size", f"mib must be a non-negative integer, not {mib!r}")
    return mib


def _freed(card: SimCard, context: Context, handle: object) -> Message:
    if not isinstance(handle, int):
        raise SimNpuRequestError("bad_handle", f"handle must be an integer, not {handle!r}")
    card.free(context, handle)
    return {"ok": True}


def _try_send(conn: LineSocket, message: Message) -> None:
    with contextlib.suppress(WireError):
        conn.send(message)
