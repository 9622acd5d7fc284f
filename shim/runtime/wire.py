"""Newline-delimited JSON framing shared by the grant path and the simulated NPU's socket.

Both sockets are local unix streams with small messages, so one JSON object per line is compact enough (a
grant round trip measures well under the 100 µs target, see ``flexnpu bench grant``) and readable with
``socat`` when debugging. Standard library only: the in-pod runtime uses it inside images we do not control.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any, Dict, List, Optional

Message = Dict[str, Any]

MAX_LINE = 1 << 20
# Bytes asked of one recv: messages are tens of bytes (a larger size costs an allocation per call).
RECV_SIZE = 4096

# Grant-path operations (client -> server).
OP_HELLO = "hello"
OP_WANT = "want"
OP_RELEASE = "release"
OP_EXTEND = "extend"
OP_PING = "ping"
# Grant-path operations (server -> client).
OP_WELCOME = "welcome"
OP_GRANT = "grant"
OP_REVOKE = "revoke"
OP_DRAIN = "drain"
OP_ERROR = "error"
OP_PONG = "pong"

# Error codes the grant server sends before it closes a connection.
ERR_UNKNOWN_REGISTRATION = "unknown_registration"
ERR_IDENTITY_MISMATCH = "identity_mismatch"
ERR_UNREGISTERED = "unregistered"
ERR_PROTOCOL = "protocol"
ERR_BUSY = "busy"


# One encoder and decoder for the process: json.dumps with options builds a new encoder per call (2x slower).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_DECODE = json.JSONDecoder().decode


class WireError(Exception):
    """The peer closed the socket or sent something that is not a JSON object line."""


def encode(message: Message) -> bytes:
    return (_ENCODE(message) + "\n").encode()


def decode(line: bytes) -> Message:
    try:
        value = _DECODE(line.decode())
    except (ValueError, RecursionError) as exc:  # RecursionError: a deeply nested line ("[" x 100000)
        raise WireError("malformed message: " + line[:80].decode(errors="replace")) from exc
    if not isinstance(value, dict):
        raise WireError("message is not a JSON object")
    return value


class LineSocket:
    """A stream socket read and written one JSON message per line, with its own receive buffer.

    A line longer than ``max_line`` bytes is a WireError (the buffer never grows past it plus one read).
    """

    def __init__(self, sock: socket.socket, max_line: int = MAX_LINE) -> None:
        self.sock = sock
        self.max_line = max_line
        self._buffer = b""
        self._timeout = sock.gettimeout()

    def send(self, message: Message) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as exc:
            raise WireError("send failed: " + str(exc)) from exc

    def receive(self, timeout: Optional[float] = None) -> Message:
        """The next message; ``timeout`` None blocks, a number of seconds raises ``socket.timeout`` when it passes.

        The timeout bounds the whole message, not each read: a peer that trickles a line byte by byte still
        runs out of time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if deadline is None:
                self._fill(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                self._fill(left)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return self._decode(line)

    def poll(self) -> List[Message]:
        """Every complete message already received, without blocking."""
        with contextlib.suppress(socket.timeout, BlockingIOError):
            self._fill(0.0)
        if b"\n" not in self._buffer:
            return []
        *lines, self._buffer = self._buffer.split(b"\n")
        return [self._decode(line) for line in lines]

    def _decode(self, line: bytes) -> Message:
        if len(line) > self.max_line:
            raise WireError("message longer than the limit")
        return decode(line)

    def _fill(self, timeout: Optional[float]) -> None:
        try:
            if timeout == 0.0:
                # MSG_DONTWAIT only returns at once on a blocking socket: with a timeout set, Python would wait.
                self._set_timeout(None)
                chunk = self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
            else:
                self._set_timeout(timeout)
                chunk = self.sock.recv(RECV_SIZE)
        except (socket.timeout, BlockingIOError):
            raise
        except OSError as exc:
            raise WireError("receive failed: " + str(exc)) from exc
        if not chunk:
            raise WireError("peer closed the connection")
        self._buffer += chunk
        if len(self._buffer) - self._buffer.rfind(b"\n") - 1 > self.max_line:  # the partial last line
            raise WireError("message longer than the limit")

    def _set_timeout(self, timeout: Optional[float]) -> None:
        # settimeout costs a syscall when it flips blocking mode: only call it on a change.
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect_unix(path: str, timeout: float = 2.0) -> LineSocket:
    """A connected LineSocket; OSError when nobody listens on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return LineSocket(sock)
