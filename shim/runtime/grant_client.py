"""The in-pod end of the grant path: ask flexnpud for slices, return them, pace locally when it is away.

Standard library only, no thread: the runtime calls it at launch boundaries. A revoke is read without blocking
(``revoked()``), so it is honoured at the next launch. When the daemon is unreachable the client paces itself at
its guaranteed share (after using u µs it waits u * (1 - share) / share) and tries to reconnect every
``reconnect_interval_s``; a refused identity is an error, never silently paced.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from flexnpu.shim.runtime import wire
from flexnpu.shim.runtime.wire import LineSocket, Message, WireError

log = logging.getLogger("flexnpu.shim.runtime")

DEFAULT_LOCAL_SLICE_US = 2000


class GrantRefusedError(Exception):
    """flexnpud refused this process: unknown registration, or the registration belongs to another pod."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Lease(object):
    """A grant in hand: ``budget_us`` of device time (``ops`` operators in the seed's ops mode)."""

    __slots__ = ("budget_us", "inflight_us", "local", "ops", "seq")

    def __init__(
        self,
        seq: int,
        budget_us: int,
        ops: Optional[int] = None,
        local: bool = False,
        inflight_us: Optional[int] = None,
    ) -> None:
        self.seq = seq
        self.budget_us = budget_us
        self.ops = ops
        self.local = local
        self.inflight_us = inflight_us  # the run-ahead flexnpud allows (short when a higher priority shares)

    def __repr__(self) -> str:
        return "Lease(seq=%d, budget_us=%d, ops=%r, local=%r)" % (self.seq, self.budget_us, self.ops, self.local)


class GrantClient:
    """One process's connection to the grant server for registration ``flexnpu_id``."""

    def __init__(
        self,
        socket_path: str,
        flexnpu_id: str,
        fallback_share: float,
        *,
        reconnect_interval_s: float = 0.5,
        local_slice_us: int = DEFAULT_LOCAL_SLICE_US,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path
        self.flexnpu_id = flexnpu_id
        self.share = min(1.0, max(0.01, fallback_share))
        self.reconnect_interval_s = reconnect_interval_s
        self.local_slice_us = local_slice_us
        self.welcome: Message = {}
        self.reconnects = 0
        self._clock = clock
        self._conn: Optional[LineSocket] = None
        self._ever_connected = False
        self._last_attempt = -1e9
        self._want_sent = False
        self._lease: Optional[Lease] = None
        self._revoked = False
        self._local_not_before = 0.0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> bool:
        """Connect and say hello; False when nobody listens. GrantRefusedError when flexnpud refuses us."""
        self._last_attempt = self._clock()
        try:
            conn = wire.connect_unix(self.socket_path)
        except OSError:
            return False
        try:
            conn.send({"op": wire.OP_HELLO, "id": self.flexnpu_id})
            reply = conn.receive(timeout=5.0)
        except (WireError, OSError):
            conn.close()
            return False
        if reply.get("op") == wire.OP_ERROR:
            conn.close()
            self._refused(reply)
            return False
        self._conn, self.welcome = conn, reply
        if self._ever_connected:
            self.reconnects += 1
            log.warning("flexnpu: reconnected to flexnpud at %s", self.socket_path)
        self._ever_connected = True
        self._want_sent = False
        return True

    def _refused(self, reply: Message) -> None:
        code = str(reply.get("code", "refused"))
        text = str(reply.get("message", "refused by flexnpud"))
        # After a daemon restart the registration may not be restored yet: keep pacing and retry. A daemon at its
        # connection limit is no verdict on us either.
        retry = code == wire.ERR_BUSY or (
            code in (wire.ERR_UNKNOWN_REGISTRATION, wire.ERR_UNREGISTERED) and self._ever_connected
        )
        if retry:
            log.warning("flexnpu: %s; pacing locally at share %.2f", text, self.share)
            return
        raise GrantRefusedError(code, text)

    def acquire(self) -> Lease:
        """Block until this process may launch; the lease says for how long."""
        if self._conn is None and self._clock() - self._last_attempt >= self.reconnect_interval_s:
            self.connect()
        if self._conn is not None:
            lease = self._acquire_from_daemon()
            if lease is not None:
                return lease
        return self._acquire_locally()

    def extend(self, used_us: int) -> Optional[Lease]:
        """The budget ran out: a renewed lease when nobody else is owed the card (no drain needed), else None."""
        lease = self._lease
        if lease is None or lease.local or self._conn is None:
            return None
        try:
            self._conn.send({"op": wire.OP_EXTEND, "seq": lease.seq, "used_us": int(used_us)})
            while self._conn is not None:
                reply = self._conn.receive()
                op = reply.get("op")
                if op == wire.OP_GRANT:
                    return self._take(reply)
                if op == wire.OP_DRAIN or (op == wire.OP_REVOKE and reply.get("seq") == lease.seq):
                    self._revoked = self._revoked or op == wire.OP_REVOKE
                    return None
                self._other(reply)
                if self._conn is None:
                    return None
        except WireError:
            self._lost()
            return None

    def release(self, used_us: int, want: bool = False, ops_used: int = 0) -> None:
        """The lease ended after ``used_us`` of device time (in-flight work drained); ``want``: ask for the next."""
        lease, self._lease, self._revoked = self._lease, None, False
        if lease is None:
            return
        if lease.local:
            self._local_not_before = self._clock() + used_us * (1.0 - self.share) / self.share / 1e6
            return
        if self._conn is None:
            return
        try:
            self._conn.send(
                {"op": wire.OP_RELEASE, "seq": lease.seq, "used_us": int(used_us), "want": want, "ops_used": ops_used}
            )
            self._want_sent = want
        except WireError:
            self._lost()

    def revoked(self) -> bool:
        """True when flexnpud asked us to stop at this launch boundary (reads the socket without blocking)."""
        if self._conn is None or self._lease is None or self._lease.local:
            return False
        try:
            for message in self._conn.poll():
                if message.get("op") == wire.OP_REVOKE and message.get("seq") == self._lease.seq:
                    self._revoked = True
                else:
                    self._other(message)
        except WireError:
            self._lost()
        return self._revoked

    def ping(self) -> None:
        """One round trip to flexnpud (the grant benchmark's baseline)."""
        if self._conn is None:
            raise WireError("not connected")
        self._conn.send({"op": wire.OP_PING})
        while self._conn.receive().get("op") != wire.OP_PONG:
            pass

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ----- internals ------------------------------------------------------------------------------------------

    def _acquire_from_daemon(self) -> Optional[Lease]:
        if self._conn is None:
            return None
        try:
            if not self._want_sent:
                self._conn.send({"op": wire.OP_WANT})
                self._want_sent = True
            while self._conn is not None:
                reply = self._conn.receive()
                if reply.get("op") == wire.OP_GRANT:
                    self._want_sent = False
                    return self._take(reply)
                self._other(reply)
                if self._conn is None:
                    return None
        except WireError:
            self._lost()
            return None

    def _acquire_locally(self) -> Lease:
        delay = self._local_not_before - self._clock()
        if delay > 0:
            time.sleep(delay)
        self._lease = Lease(0, self.local_slice_us, None, local=True)
        return self._lease

    def _take(self, reply: Message) -> Lease:
        ops, inflight = reply.get("ops"), reply.get("inflight_us")
        self._lease = Lease(
            int(reply["seq"]),
            int(reply["budget_us"]),
            int(ops) if ops is not None else None,
            inflight_us=int(inflight) if isinstance(inflight, int) else None,
        )
        self._revoked = False
        return self._lease

    def _other(self, message: Message) -> None:
        """A message nobody waits for: an error ends the session; stale revokes and pongs need nothing."""
        if message.get("op") == wire.OP_ERROR:
            self._lost()
            self._refused(message)

    def _lost(self) -> None:
        if self._conn is not None:
            log.warning("flexnpu: lost flexnpud at %s; pacing locally at share %.2f", self.socket_path, self.share)
            self._conn.close()
        self._conn = None
        self._want_sent = False
        if self._lease is not None and not self._lease.local:
            self._lease = Lease(0, self._lease.budget_us, None, local=True)
