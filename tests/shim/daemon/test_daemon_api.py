"""The registration API over real HTTP (aiohttp test server in this process, a fake grant server)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from daemon_helpers import FakeGrant

from flexnpu.registration import Registration, parse_registration
from flexnpu.shim.core.admission import Capacity
from flexnpu.shim.daemon.api import build_app
from flexnpu.shim.daemon.devices import sim_cards
from flexnpu.shim.daemon.service import DaemonService
from flexnpu.shim.daemon.store import RegistrationStore, StoreError

BODY = {"flexnpu_id": "0", "entity": "train", "npu": 0, "chip": 0, "aicore_alloc": 2, "memory_alloc": 16384}
TOKEN = "t0ken-for-tests"


@pytest.fixture
def grant() -> FakeGrant:
    return FakeGrant()


@pytest.fixture
def store(tmp_path: Path) -> RegistrationStore:
    return RegistrationStore(tmp_path / "registrations.json")


def make_service(store: RegistrationStore, grant: FakeGrant) -> DaemonService:
    service = DaemonService(sim_cards("sim:910B4x2"), Capacity(10), store, grant)
    service.restore()
    return service


@pytest.fixture
async def client(store: RegistrationStore, grant: FakeGrant) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(make_service(store, grant)))) as c:
        yield c


@pytest.fixture
async def guarded(store: RegistrationStore, grant: FakeGrant) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(make_service(store, grant), TOKEN))) as c:
        yield c


async def post(client: TestClient[Any, Any], path: str, body: object) -> tuple[int, Any]:
    data = body if isinstance(body, str) else json.dumps(body)
    async with client.post(path, data=data) as response:
        return response.status, await response.json()


async def get(client: TestClient[Any, Any], path: str) -> tuple[int, Any]:
    async with client.get(path) as response:
        return response.status, await response.json()


async def samples(client: TestClient[Any, Any]) -> dict[str, float]:
    """The daemon's /metrics as sample line -> value."""
    async with client.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


async def test_register_then_info_then_unregister(
    client: TestClient[Any, Any], grant: FakeGrant, store: RegistrationStore
) -> None:
    status, reply = await post(client, "/device/register", {**BODY, "priority": "high", "pod_uid": "uid-1"})
    assert (status, reply["result"]) == (200, "created")
    assert reply["registration"]["priority"] == "high"
    assert [r.flexnpu_id for r in grant.pushed[-1]] == ["0"]
    assert [r.flexnpu_id for r in store.load().registrations] == ["0"]
    grant.figures["0"] = {"device_time_us": 5000.0, "grants": 3.0, "wait_p99_us": 120.0, "achieved_share": 0.19}
    status, info = await get(client, "/device/flexnpu-info")
    assert status == 200 and info["quota"] == 10
    (view,) = info["registrations"]
    assert view["card_uuid"] == "sim-910b4-0" and view["target_share"] == pytest.approx(0.2)
    assert view["achieved_share"] == pytest.approx(0.19) and view["wait_p99_us"] == 120.0 and view["grants"] == 3
    status, physical = await get(client, "/device/physical-info")
    card0 = physical["cards"][0]
    assert (card0["aicore_used"], card0["memory_used_mib"], card0["tenants"], card0["hbm_mib"]) == (2, 16384, 1, 32768)
    status, reply = await post(client, "/device/unregister", {"flexnpu_id": "0"})
    assert (status, reply["result"], reply["registration"]["flexnpu_id"]) == (200, "removed", "0")
    assert grant.pushed[-1] == [] and store.load().registrations == []
    assert (await get(client, "/device/flexnpu-info"))[1]["registrations"] == []


async def test_register_is_idempotent(client: TestClient[Any, Any], grant: FakeGrant) -> None:
    assert (await post(client, "/device/register", BODY))[1]["result"] == "created"
    pushes = len(grant.pushed)
    for _ in range(2):
        status, reply = await post(client, "/device/register", BODY)
        assert (status, reply["result"]) == (200, "unchanged")
    numeric_id = {**BODY, "flexnpu_id": 0}  # the seed's register.sh may send the id as a number
    assert (await post(client, "/device/register", numeric_id))[1]["result"] == "unchanged"
    assert len(grant.pushed) == pushes


async def test_same_id_other_body_updates_when_it_fits(client: TestClient[Any, Any], store: RegistrationStore) -> None:
    await post(client, "/device/register", BODY)
    await post(client, "/device/register", {**BODY, "flexnpu_id": "1", "aicore_alloc": 2})
    status, reply = await post(client, "/device/register", {**BODY, "aicore_alloc": 8})
    assert (status, reply["result"]) == (200, "updated")
    status, reply = await post(client, "/device/register", {**BODY, "aicore_alloc": 9})
    assert status == 409 and "aicore_alloc 9" in reply["error"]
    status, reply = await post(client, "/device/register", {**BODY, "aicore_alloc": 9, "npu": 1})
    assert (status, reply["result"]) == (200, "updated")  # moving to the other card
    saved = {r.flexnpu_id: r for r in store.load().registrations}
    assert saved["0"] == parse_registration({**BODY, "aicore_alloc": 9, "npu": 1})


async def test_quota_and_memory_overflow_are_409(client: TestClient[Any, Any]) -> None:
    for fid, aicore in (("a", 2), ("b", 2), ("c", 6)):
        assert (
            await post(
                client, "/device/register", {**BODY, "flexnpu_id": fid, "aicore_alloc": aicore, "memory_alloc": 1024}
            )
        )[0] == 200
    status, reply = await post(client, "/device/register", {**BODY, "flexnpu_id": "d", "aicore_alloc": 1})
    assert status == 409 and "10 of 10" in reply["error"] and "npu 0" in reply["error"]
    assert set(reply) == {"error"}
    status, reply = await post(client, "/device/register", {**BODY, "flexnpu_id": "e", "npu": 1, "memory_alloc": 32769})
    assert status == 409 and "memory_alloc 32769" in reply["error"] and "32768 MiB" in reply["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BODY, "npu": 5}, "npu"),
        ({**BODY, "chip": 1}, "chip"),
        ({**BODY, "npu": -1}, "npu"),
        ({**BODY, "aicore_alloc": -2}, "aicore_alloc"),
        ({**BODY, "aicore_alloc": 0}, "aicore_alloc"),
        ({**BODY, "aicore_alloc": 10**30}, "aicore_alloc"),
        ({**BODY, "aicore_alloc": 2.5}, "aicore_alloc"),
        ({**BODY, "aicore_alloc": "2"}, "aicore_alloc"),
        ({**BODY, "memory_alloc": -1}, "memory_alloc"),
        ({**BODY, "memory_alloc": 2**40}, "memory_alloc"),
        ({**BODY, "priority": "urgent"}, "priority"),
        ({k: v for k, v in BODY.items() if k != "aicore_alloc"}, "aicore_alloc"),
        ({k: v for k, v in BODY.items() if k != "npu"}, "npu"),
        ({k: v for k, v in BODY.items() if k != "flexnpu_id"}, "flexnpu_id"),
        ({**BODY, "flexnpu_id": ""}, "flexnpu_id"),
        ({**BODY, "entity": 7}, "entity"),
        ([BODY], "body"),
        ("{not json", "body"),
        ("", "body"),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    client: TestClient[Any, Any], body: object, field: str, grant: FakeGrant
) -> None:
    pushes = len(grant.pushed)
    status, reply = await post(client, "/device/register", body)
    assert status == 400 and reply["field"] == field and reply["error"]
    assert len(grant.pushed) == pushes


async def test_unregister_unknown_or_bad(client: TestClient[Any, Any]) -> None:
    status, reply = await post(client, "/device/unregister", {"flexnpu_id": "ghost"})
    assert (status, reply["field"]) == (404, "flexnpu_id") and "ghost" in reply["error"]
    status, reply = await post(client, "/device/unregister", {})
    assert (status, reply["field"]) == (400, "flexnpu_id")
    status, reply = await post(client, "/device/unregister", "[")
    assert (status, reply["field"]) == (400, "body")


@pytest.mark.parametrize(
    ("raw", "reason"), [(b'{"flexnpu_id": "\xff"}', "not UTF-8"), (b"[" * 5000 + b"]" * 5000, "nested too deeply")]
)
async def test_undecodable_bodies_get_400_naming_the_body(
    client: TestClient[Any, Any], raw: bytes, reason: str
) -> None:
    async with client.post("/device/register", data=raw) as response:
        status, reply = response.status, await response.json()
    assert (status, reply["field"]) == (400, "body")
    assert reason in reply["error"]


async def test_unknown_paths_and_methods_get_json_errors(client: TestClient[Any, Any]) -> None:
    assert (await get(client, "/device/nothing"))[0] == 404
    status, reply = await get(client, "/device/register")
    assert status == 405 and reply["error"]


async def test_oversized_body_is_rejected_with_json(client: TestClient[Any, Any]) -> None:
    status, reply = await post(client, "/device/register", {**BODY, "entity": "x" * 100_000})
    assert status == 413 and reply["error"]


async def test_health_and_metrics(client: TestClient[Any, Any], grant: FakeGrant) -> None:
    assert await get(client, "/service/health") == (200, {"status": "ok"})
    await post(client, "/device/register", BODY)
    grant.figures["0"] = {"device_time_us": 2_000_000.0, "grants": 7.0, "wait_p99_us": 250.0, "achieved_share": 0.2}
    lines = await samples(client)
    card0 = 'card="sim-910b4-0",chip="0",model="910B4",npu="0"'
    tenant = 'chip="0",entity="train",flexnpu_id="0",npu="0",priority="normal"'
    assert lines["flexnpu_registrations"] == 1
    assert lines[f"flexnpu_card_units_used{{{card0}}}"] == 2
    assert lines[f"flexnpu_card_memory_used_mib{{{card0}}}"] == 16384
    assert lines[f"flexnpu_tenant_achieved_share{{{tenant}}}"] == pytest.approx(0.2)
    assert lines[f"flexnpu_tenant_grant_wait_p99_seconds{{{tenant}}}"] == pytest.approx(250e-6)
    assert lines[f"flexnpu_tenant_device_time_seconds_total{{{tenant}}}"] == pytest.approx(2.0)


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, "Bearer "])
async def test_token_guards_everything_but_health(guarded: TestClient[Any, Any], header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in (
        ("POST", "/device/register"),
        ("POST", "/device/unregister"),
        ("GET", "/metrics"),
        ("GET", "/device/flexnpu-info"),
        ("GET", "/device/physical-info"),
    ):
        async with guarded.request(method, path, data=json.dumps(BODY), headers=headers) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    async with guarded.get("/service/health", headers=headers) as response:
        assert response.status == 200


async def test_token_lets_requests_through(guarded: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with guarded.post("/device/register", data=json.dumps(BODY), headers=headers) as response:
        assert response.status == 200
    async with guarded.get("/device/flexnpu-info", headers=headers) as response:
        assert len((await response.json())["registrations"]) == 1


async def test_failed_write_changes_nothing(tmp_path: Path, grant: FakeGrant) -> None:
    state = tmp_path / "state"
    service = make_service(RegistrationStore(state / "registrations.json"), grant)
    state.write_text("")  # the state directory's place is now taken by a file: every save fails
    async with TestClient(TestServer(build_app(service))) as c:
        status, reply = await post(c, "/device/register", BODY)
        assert status == 503 and "cannot be written" in reply["error"]
        assert (await get(c, "/device/flexnpu-info"))[1]["registrations"] == []
    assert grant.pushed == [[]]


def test_restore_reports_what_no_longer_fits_and_keeps_the_file(tmp_path: Path, grant: FakeGrant) -> None:
    store = RegistrationStore(tmp_path / "registrations.json")
    saved = [
        parse_registration({**BODY, "flexnpu_id": fid, "aicore_alloc": a, "npu": npu})
        for fid, a, npu in (("a", 4, 0), ("b", 6, 0), ("c", 1, 1), ("gone", 1, 7))
    ]
    store.save(saved)
    service = DaemonService(sim_cards("sim:910B4x2"), Capacity(5), store, grant)
    problems = service.restore()
    assert [r.flexnpu_id for r in service.registrations] == ["a", "c"]
    assert [r.flexnpu_id for r in grant.pushed[-1]] == ["a", "c"]
    assert any("'b'" in p and "aicore_alloc 6" in p for p in problems)
    assert any("'gone'" in p and "npu=7" in p for p in problems)
    kept = [p for p in tmp_path.iterdir() if ".refused-" in p.name]
    assert len(kept) == 1 and RegistrationStore(kept[0]).load().registrations == saved


SMALL = {**BODY, "aicore_alloc": 1, "memory_alloc": 1024}  # ten of these fill a card's units, not its HBM


class GatedStore(RegistrationStore):
    """A store whose writes wait for the test's word (``release``), each counted; ``fail`` makes the next fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[list[str]] = []
        self.gate = threading.Semaphore(0)
        self.entered = threading.Semaphore(0)
        self.fail = False

    def save(self, registrations: Iterable[Registration]) -> None:
        ids = [r.flexnpu_id for r in registrations]
        self.entered.release()
        self.gate.acquire()
        if self.fail:
            self.fail = False
            raise StoreError(f"registrations file {self.path} cannot be written (test)")
        self.writes.append(ids)
        super().save(registrations)


async def entered(store: GatedStore) -> None:
    """Until a write has begun (it then waits at the gate)."""
    while not store.entered.acquire(blocking=False):
        await asyncio.sleep(0.001)


@pytest.fixture
def gated(tmp_path: Path, grant: FakeGrant) -> tuple[GatedStore, DaemonService]:
    store = GatedStore(tmp_path / "registrations.json")
    return store, make_service(store, grant)


async def test_a_burst_of_changes_shares_writes_and_each_is_answered_only_once_written(
    gated: tuple[GatedStore, DaemonService], grant: FakeGrant
) -> None:
    store, service = gated
    async with TestClient(TestServer(build_app(service))) as c:
        first = asyncio.create_task(post(c, "/device/register", {**SMALL, "flexnpu_id": "r0"}))
        await entered(store)  # r0's write has begun: the nine that follow are decided while it runs
        rest = [
            asyncio.create_task(post(c, "/device/register", {**SMALL, "flexnpu_id": f"r{i}"})) for i in range(1, 10)
        ]
        status, info = await get(c, "/device/flexnpu-info")  # the loop keeps serving while a write runs
        assert status == 200 and info["registrations"] == [] and not first.done()
        # Admission already counts the nine (and r0): the card's 10 units are taken, an eleventh does not fit.
        while service.decided < 10:  # r0 and the nine decided, one write begun, none of the nine written
            await asyncio.sleep(0.001)
        status, reply = await post(c, "/device/register", {**SMALL, "flexnpu_id": "r10"})
        assert status == 409 and "r10" not in json.dumps(info) and reply["error"]
        store.gate.release()
        assert (await first)[0] == 200
        await entered(store)
        assert not any(t.done() for t in rest) and grant.pushed[-1] and len(grant.pushed[-1]) == 1
        store.gate.release()
        assert [(await t)[0] for t in rest] == [200] * 9
        counted = await samples(c)
    assert store.writes == [["r0"], [f"r{i}" for i in range(10)]]
    assert (counted["flexnpu_daemon_write_seconds_count"], counted["flexnpu_daemon_write_changes_sum"]) == (2, 10)
    assert counted['flexnpu_daemon_write_changes_bucket{le="1.0"}'] == 1  # r0's write; the nine's in le=16
    assert counted["flexnpu_daemon_write_failures_total"] == 0
    assert [r.flexnpu_id for r in store.load().registrations] == [f"r{i}" for i in range(10)]
    assert [len(p) for p in grant.pushed] == [0, 1, 10]


async def test_a_failed_write_fails_every_change_it_held_and_the_next_one_starts_from_what_was_written(
    gated: tuple[GatedStore, DaemonService], grant: FakeGrant
) -> None:
    store, service = gated
    async with TestClient(TestServer(build_app(service))) as c:
        ok = asyncio.create_task(post(c, "/device/register", {**SMALL, "flexnpu_id": "kept"}))
        await entered(store)
        store.gate.release()
        assert (await ok)[0] == 200
        store.fail = True
        doomed = [asyncio.create_task(post(c, "/device/register", {**SMALL, "flexnpu_id": f"d{i}"})) for i in range(3)]
        gone = asyncio.create_task(post(c, "/device/unregister", {"flexnpu_id": "kept"}))
        await entered(store)
        while service.decided < 5:  # "kept" was 1; the three registers and the unregister decided before it fails
            await asyncio.sleep(0.001)
        store.gate.release()
        answers = [await t for t in (*doomed, gone)]
        assert [a[0] for a in answers] == [503] * 4 and all("cannot be written" in a[1]["error"] for a in answers)
        status, info = await get(c, "/device/flexnpu-info")
        assert status == 200 and [r["flexnpu_id"] for r in info["registrations"]] == ["kept"]
        again = asyncio.create_task(post(c, "/device/register", {**SMALL, "flexnpu_id": "d0"}))
        await entered(store)
        store.gate.release()
        assert (await again)[0] == 200
        counted = await samples(c)
    assert [r.flexnpu_id for r in store.load().registrations] == ["kept", "d0"]
    assert (counted["flexnpu_daemon_write_failures_total"], counted["flexnpu_daemon_write_seconds_count"]) == (1, 2)
    assert [[r.flexnpu_id for r in p] for p in grant.pushed] == [[], ["kept"], ["kept", "d0"]]
