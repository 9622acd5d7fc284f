"""The DRA plugin's adapters against real peers: a real flexnpud on a simulated node, kmock as the API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import kmock
import pytest
from dra_fakes import claim, result

from flexnpu.daemonclient import DaemonClient, DaemonRefused, DaemonUnreachable
from flexnpu.dra.kube import ClaimApi, KubeError
from flexnpu.registration import Registration
from flexnpu_testsupport.kubeemulator import KubeEmulator
from flexnpu_testsupport.operatorkit import DaemonProcess
from flexnpu_testsupport.waiting import free_port

CLAIMS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"


@pytest.fixture
def flexnpud(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess("node-a", tmp_path)
    asyncio.run(daemon.start())
    try:
        yield daemon
    finally:
        asyncio.run(daemon.stop())


@pytest.fixture
def k8s() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator()
    emulator.start()

    async def declare() -> None:
        emulator.emulator.resources["resource.k8s.io/v1/resourceclaims"] = kmock.ResourceInfo(
            kind="ResourceClaim", namespaced=True, singular="resourceclaim", verbs={"get", "create", "list"}
        )
        emulator.emulator.resources["v1/events"] = kmock.ResourceInfo(
            kind="Event", namespaced=True, singular="event", verbs={"create", "list"}
        )

    asyncio.run_coroutine_threadsafe(declare(), emulator.loop).result(timeout=10)
    try:
        yield emulator
    finally:
        emulator.stop()


def registration(memory: int = 16384) -> Registration:
    return Registration(flexnpu_id="dra.u.npu.0", entity="default/p1", npu=0, aicore_alloc=3, memory_alloc=memory)


def test_register_twice_holds_one_registration_and_unregister_removes_it(flexnpud: DaemonProcess) -> None:
    client = DaemonClient(flexnpud.url, token=lambda: "")
    client.register(registration())
    client.register(registration())
    held = asyncio.run(flexnpud.registrations())
    assert list(held) == ["dra.u.npu.0"]
    assert held["dra.u.npu.0"]["aicore_alloc"] == 3
    assert client.unregister("dra.u.npu.0") is True
    assert client.unregister("dra.u.npu.0") is False
    assert asyncio.run(flexnpud.registrations()) == {}


def test_memory_past_hbm_is_refused_with_the_daemons_reason(flexnpud: DaemonProcess) -> None:
    client = DaemonClient(flexnpud.url, token=lambda: "")
    with pytest.raises(DaemonRefused) as info:
        client.register(registration(memory=1 << 20))
    assert info.value.status in (400, 409)
    assert "memory" in str(info.value)


def test_no_daemon_is_unreachable() -> None:
    with pytest.raises(DaemonUnreachable):
        DaemonClient(f"http://127.0.0.1:{free_port()}", token=lambda: "", timeout=2).register(registration())


def test_claim_is_read_by_name_and_uid_and_a_refusal_posts_an_event(k8s: KubeEmulator, tmp_path: Path) -> None:
    body = claim(result(units="3"))
    k8s.request("POST", CLAIMS, body)
    api = ClaimApi.connect("node-a", k8s.kubeconfig(tmp_path))
    try:
        got = api.claim("default", "c1", "uid-1")
        assert got["status"]["allocation"] == body["status"]["allocation"]
        with pytest.raises(KubeError, match="uid"):
            api.claim("default", "c1", "uid-2")
        with pytest.raises(KubeError) as gone:
            api.claim("default", "c2", "uid-1")
        assert gone.value.status == 404
        api.refuse("default", "c1", "uid-1", "units='11': must be in 1..10")
    finally:
        api.close()
    events = k8s.request("GET", "/api/v1/namespaces/default/events")["items"]
    assert [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in events] == [
        ("c1", "PrepareFailed", "units='11': must be in 1..10")
    ]
    assert json.dumps(events[0]["involvedObject"]).count("ResourceClaim") == 1
