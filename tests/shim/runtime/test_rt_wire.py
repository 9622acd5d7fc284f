"""The newline-JSON framing of the grant path and the simulated NPU's socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from flexnpu.shim.runtime.wire import LineSocket, WireError, encode


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.timeout(3)
def test_poll_returns_at_once_on_a_socket_that_has_a_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.settimeout(30.0)  # as after a hello read with a timeout: a non-blocking read must not wait 30 s
    conn = LineSocket(a)
    assert conn.poll() == []
    b.sendall(encode({"op": "revoke", "seq": 7}))
    assert conn.receive(timeout=5.0) == {"op": "revoke", "seq": 7}
    assert conn.poll() == []


def test_poll_returns_every_complete_line_and_keeps_the_partial_one(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    conn = LineSocket(a)
    b.sendall(encode({"op": "want"}) + encode({"op": "ping"}) + b'{"op":"rel')
    assert conn.receive(timeout=5.0) == {"op": "want"}
    assert conn.poll() == [{"op": "ping"}]
    b.sendall(b'ease","seq":3}\n')
    assert conn.receive(timeout=5.0) == {"op": "release", "seq": 3}


def test_a_closed_peer_and_a_malformed_line_are_wire_errors(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    conn = LineSocket(a)
    b.sendall(b"[1, 2]\n")
    with pytest.raises(WireError, match="not a JSON object"):
        conn.receive(timeout=5.0)
    b.sendall(b"{nope\n")
    with pytest.raises(WireError, match="malformed"):
        conn.receive(timeout=5.0)
    b.close()
    with pytest.raises(WireError, match="closed"):
        conn.poll()
