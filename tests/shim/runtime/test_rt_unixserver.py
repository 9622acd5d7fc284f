"""The threaded unix-socket server the grant socket and the simulated NPU share: limits, failures, stop."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rt_helpers import wait_for

from flexnpu.shim.grant.unixserver import Credentials, Limits, UnixServer, credentials_of

Handler = Callable[[socket.socket, Credentials], None]


def echo_line(sock: socket.socket, _peer: Credentials) -> None:
    data = sock.recv(100)
    if data == b"boom\n":
        raise RuntimeError("the handler failed")
    sock.sendall(data)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., UnixServer[Credentials]]]:
    servers: list[UnixServer[Credentials]] = []

    def make(handle: Handler = echo_line, **options: object) -> UnixServer[Credentials]:
        server: UnixServer[Credentials] = UnixServer(
            str(tmp_path / "u.sock"),
            handle,
            credentials_of,
            name="test",
            **options,  # type: ignore[arg-type]
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def connect(server: UnixServer[Credentials]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(server.path)
    return sock


def test_a_failing_handler_is_logged_and_frees_its_slot(
    serve: Callable[..., UnixServer[Credentials]], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(limits=Limits(max_connections=1, max_per_peer=1))
    with caplog.at_level(logging.ERROR), connect(server) as sock:
        sock.sendall(b"boom\n")
        assert sock.recv(100) == b""
    wait_for(lambda: server.connections == 0, "the slot to be freed")
    assert "the handler failed" in caplog.text
    with connect(server) as sock:  # the one slot is usable again
        sock.sendall(b"hi\n")
        assert sock.recv(100) == b"hi\n"


def test_past_a_limit_the_peer_hears_why_and_is_closed(serve: Callable[..., UnixServer[Credentials]]) -> None:
    def refuse(sock: socket.socket, reason: str) -> None:
        sock.send(reason.encode() + b"\n")

    server = serve(lambda s, p: s.recv(1), limits=Limits(max_connections=5, max_per_peer=2), refuse=refuse)
    held = [connect(server), connect(server)]
    try:
        wait_for(lambda: server.connections == 2, "two connections")
        with connect(server) as extra:
            assert extra.recv(200) == b"too many connections from one peer (the limit is 2)\n"
            assert extra.recv(200) == b""
        assert server.refused == 1
    finally:
        for sock in held:
            sock.close()


def test_stop_closes_every_connection_and_removes_the_socket(serve: Callable[..., UnixServer[Credentials]]) -> None:
    entered = threading.Event()

    def wait_forever(sock: socket.socket, _peer: Credentials) -> None:
        entered.set()
        sock.recv(1)  # returns at the shutdown

    server = serve(wait_forever)
    with connect(server) as sock:
        assert entered.wait(20)
        server.stop()
        assert sock.recv(100) == b""
    assert not os.path.exists(server.path)
    assert not server.alive and server.connections == 0


def test_a_stale_socket_file_is_replaced(tmp_path: Path, serve: Callable[..., UnixServer[Credentials]]) -> None:
    (tmp_path / "u.sock").write_text("stale", encoding="utf-8")
    server = serve()
    with connect(server) as sock:
        sock.sendall(b"hi\n")
        assert sock.recv(100) == b"hi\n"
