"""Regression tests for what a fuzzing pass found in flexnpud: hostile strings, state files and HTTP bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from daemon_helpers import FakeGrant

from flexnpu.priority import Priority
from flexnpu.registration import Registration
from flexnpu.shim.core.admission import Capacity
from flexnpu.shim.daemon.api import app_runner, build_app
from flexnpu.shim.daemon.devices import sim_cards
from flexnpu.shim.daemon.metrics import metrics_registry, render
from flexnpu.shim.daemon.service import DaemonService
from flexnpu.shim.daemon.store import RegistrationStore

BODY = {"flexnpu_id": "0", "entity": "train", "npu": 0, "chip": 0, "aicore_alloc": 2, "memory_alloc": 1024}
TOKEN = "t0ken-for-tests"
LONE_SURROGATE = "\ud800"


def service_on(path: Path, grant: FakeGrant | None = None) -> DaemonService:
    service = DaemonService(sim_cards("sim:910B4x2"), Capacity(10), RegistrationStore(path), grant or FakeGrant())
    service.restore()
    return service


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(service_on(tmp_path / "registrations.json")))) as c:
        yield c


# -- strings that are not UTF-8 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["flexnpu_id", "entity", "pod_uid"])
async def test_a_lone_surrogate_is_refused_with_400_naming_the_field(client: TestClient[Any, Any], field: str) -> None:
    # json.dumps writes the escape "\ud800", which json.loads on the daemon's side turns back into a lone surrogate.
    raw = json.dumps({**BODY, field: f"x{LONE_SURROGATE}"})
    async with client.post("/device/register", data=raw) as response:
        status, reply = response.status, await response.json()
    assert (status, reply["field"]) == (400, field)
    assert "not valid Unicode" in reply["error"]
    async with client.get("/device/flexnpu-info") as response:
        assert (await response.json())["registrations"] == []
    async with client.get("/metrics") as response:
        assert response.status == 200


def test_an_old_state_file_with_a_lone_surrogate_is_filtered_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    bad = {**BODY, "flexnpu_id": "1", "entity": LONE_SURROGATE}
    document = {"version": 1, "registrations": [BODY, bad]}
    path.write_text(json.dumps(document))  # what an older daemon persisted
    service = service_on(path)
    assert [r.flexnpu_id for r in service.registrations] == ["0"]
    assert b"flexnpu_registrations 1.0" in render(metrics_registry(service))
    kept = [p for p in tmp_path.iterdir() if ".invalid-" in p.name]
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == document


def test_the_exporter_survives_a_label_that_is_not_utf8(tmp_path: Path) -> None:
    grant = FakeGrant()
    service = service_on(tmp_path / "registrations.json", grant)
    # Past the API's check (a future field, a bug elsewhere): the scrape must still succeed.
    service._registrations["x"] = Registration(
        "x", f"a{LONE_SURROGATE}b", npu=0, aicore_alloc=1, memory_alloc=0, priority=Priority.LOW
    )
    text = render(metrics_registry(service)).decode("utf-8")
    assert 'entity="a\\\\ud800b"' in text


# -- state files a crash or an attacker left -----------------------------------------------------------------------


def test_a_deeply_nested_state_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "registrations.json"
    content = b"[" * 200_000
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="flexnpu.shim.daemon.service"):
        service = service_on(path)
    assert service.registrations == []
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("registrations.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content and not path.exists()
    assert any("nested too deeply" in r.getMessage() and str(aside[0]) in r.getMessage() for r in caplog.records)


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    path = tmp_path / "registrations.json"
    RegistrationStore(path).save([Registration("0", "train", npu=0, aicore_alloc=2, memory_alloc=0)])
    leftovers = [tmp_path / f".registrations.json.{tag}.tmp" for tag in ("abc123", "x_y")]
    for leftover in leftovers:
        leftover.write_bytes(b'{"version": 1, "regis')
    unrelated = tmp_path / ".other.json.abc.tmp"
    unrelated.write_bytes(b"")
    loaded = RegistrationStore(path).load()
    assert [r.flexnpu_id for r in loaded.registrations] == ["0"]
    assert sorted(loaded.removed) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc.tmp", "registrations.json"]


# -- HTTP bytes ---------------------------------------------------------------------------------------------------


async def test_a_non_utf8_authorization_header_gets_a_json_401(tmp_path: Path) -> None:
    runner = app_runner(service_on(tmp_path / "registrations.json"), TOKEN)
    async with served(runner) as port:
        head, body = await exchange(
            port,
            b"GET /device/flexnpu-info HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
        )
    assert head.startswith(b"HTTP/1.1 401") and b"application/json" in head
    assert "bearer token" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("request_bytes", "words"),
    [
        (b"GARBAGE\r\n\r\n", "bad request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "bad request"),
        (b"POST /device/register HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", "Content-Length"),
        (b"POST /device/register HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", "Content-Length"),
        (b"GET /service/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", "bytes"),
    ],
)
async def test_http_parser_errors_come_back_as_json(tmp_path: Path, request_bytes: bytes, words: str) -> None:
    runner = app_runner(service_on(tmp_path / "registrations.json"))
    async with served(runner) as port:
        head, body = await exchange(port, request_bytes)
    assert head.split(b" ", 2)[1] == b"400" and b"application/json" in head
    reply = json.loads(body)
    assert words in reply["error"] and set(reply) == {"error"}


async def test_the_runner_still_serves_the_api(tmp_path: Path) -> None:
    async with served(app_runner(service_on(tmp_path / "registrations.json"))) as port:
        head, body = await exchange(port, b"GET /service/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"status": "ok"}


class served:
    """The runner on a loopback port, for the length of an ``async with``."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    async def __aenter__(self) -> int:
        await self.runner.setup()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        await web.SockSite(self.runner, listener).start()
        port: int = listener.getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes, read the reply until the server closes; (status line and headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body
