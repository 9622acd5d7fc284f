"""One threaded unix-socket stream server, shared by flexnpud's grant socket and the simulated NPU's socket.

Both serve small local peers with one reader thread per connection; what they need from the server is the same
and easy to get wrong twice: replace a stale socket file, bound the connections (in total and per peer, so that a
pod opening thousands of them is refused instead of exhausting the daemon's threads), close every connection on
``stop`` and wait for its thread, and remove the socket file. The protocol lives in the ``handle`` callback, which
owns the connection from accept to return (it may close it early; the server closes it afterwards in any case).

Who a peer is comes from the ``identify`` callback (the kernel's SO_PEERCRED by default); ``peer_key`` maps that
identity to the key the per-peer cap counts (the grant socket counts by pod, the simulator by process: the
identity itself by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 512
MAX_PER_PEER = 64
BACKLOG = 128

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True)
class Credentials:
    """What the kernel says about the process at the other end of a unix socket (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


def credentials_of(sock: socket.socket) -> Credentials:
    """The peer's pid, uid and gid; OSError when the socket is not connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Credentials(pid, uid, gid)


def _itself(peer: Hashable) -> Hashable:
    return peer


@dataclass(frozen=True)
class Limits:
    """How many connections the server keeps open at once."""

    max_connections: int = MAX_CONNECTIONS
    """All peers together; one more is closed at once."""
    max_per_peer: int = MAX_PER_PEER
    """One peer (as ``peer_key`` counts peers); one more is closed at once."""


class UnixServer(Generic[P]):
    """Accepts on ``path`` and runs ``handle(sock, peer)`` in a thread per connection, within ``limits``."""

    def __init__(
        self,
        path: str,
        handle: Callable[[socket.socket, P], None],
        identify: Callable[[socket.socket], P],
        *,
        name: str,
        limits: Limits = Limits(),
        peer_key: Callable[[P], Hashable] = _itself,
        mode: int | None = None,
        refuse: Callable[[socket.socket, str], None] | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.limits = limits
        self.refused = 0
        self._handle = handle
        self._identify = identify
        self._peer_key = peer_key
        self._mode = mode
        self._refuse = refuse
        self._lock = threading.Lock()
        self._open: dict[socket.socket, Hashable] = {}
        self._per_peer: Counter[Hashable] = Counter()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Listen (replacing a stale socket file) and accept in a background thread; returns once listening.

        The socket is bound and listening under a temporary name first and then renamed into place, so a client
        that sees the file never finds it refusing connections (as it would between bind and listen).
        """
        staging = f"{self.path}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(staging)
            if self._mode is not None:
                os.chmod(staging, self._mode)
            listener.listen(BACKLOG)
            os.replace(staging, self.path)
        except OSError:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, shut every connection down, wait for the threads, remove the socket file."""
        with self._lock:
            self._stopping = True
            sockets = list(self._open)
        if self._listener is not None:
            shutdown(self._listener)
            self._listener.close()
        for sock in sockets:
            shutdown(sock)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._open)

    @property
    def alive(self) -> bool:
        """True while the accept thread runs."""
        return self._acceptor is not None and self._acceptor.is_alive()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            peer = self._identify(sock)
            key = self._peer_key(peer)
        except OSError:
            sock.close()
            return
        with self._lock:
            if self._stopping:
                sock.close()
                return
            reason = self._over_limit(key)
            if not reason:
                self._open[sock] = key
                self._per_peer[key] += 1
                thread = threading.Thread(target=self._run, args=(sock, peer), name=f"{self.name}-conn", daemon=True)
                self._threads.add(thread)
        if reason:
            self._turn_away(sock, reason)
            return
        thread.start()

    def _over_limit(self, key: Hashable) -> str:
        if len(self._open) >= self.limits.max_connections:
            return f"too many connections (the limit is {self.limits.max_connections})"
        if self._per_peer[key] >= self.limits.max_per_peer:
            return f"too many connections from one peer (the limit is {self.limits.max_per_peer})"
        return ""

    def _turn_away(self, sock: socket.socket, reason: str) -> None:
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            log.warning("%s: refused a connection: %s (%d refused so far)", self.name, reason, self.refused)
        try:
            if self._refuse is not None:
                sock.setblocking(False)
                self._refuse(sock, reason)
        except OSError:
            pass
        finally:
            sock.close()

    def _run(self, sock: socket.socket, peer: P) -> None:
        try:
            self._handle(sock, peer)
        except Exception:  # the handler's bug must not leak a slot or kill the server: log it, close the peer
            log.exception("%s: connection handler failed", self.name)
        finally:
            with self._lock:
                key = self._open.pop(sock, None)
                if key is not None:
                    self._per_peer[key] -= 1
                    if self._per_peer[key] <= 0:
                        del self._per_peer[key]
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                sock.close()


def shutdown(sock: socket.socket) -> None:
    """Wake whoever reads ``sock`` (its recv returns end-of-stream); no error when it is closed already."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
