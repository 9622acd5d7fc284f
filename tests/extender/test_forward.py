"""Two extender replicas against kmock: a synced standby is ready, and the binds it receives land through the
leader, whose URL it reads from the election Lease; never in a loop, and with an error naming why when the
leader cannot be asked."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import kmock
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from extender_kit import Extender, inventory, node, pod

from flexnpu.errors import ConfigError
from flexnpu.extender.forward import FORWARDED_HEADER, BindForwarder
from flexnpu.extender.kube import KubeApi, KubeConfig, KubeWriter
from flexnpu.extender.leader import ANNOTATION_LEADER_URL, ElectionConfig, LeaderElector
from flexnpu.extender.main import advertise_url, serve
from flexnpu.extender.pods import PodKey
from flexnpu.extender.server import make_app
from flexnpu.extender.service import ExtenderService
from flexnpu.extender.settings import ExtenderSettings
from flexnpu.extender.state import ClusterState

LEASE = ("coordination.k8s.io/v1/leases", "kube-system", "flexnpu-extender")


class CountingWriter(KubeWriter):
    """The real writer to kmock, counting the Bindings it creates."""

    bindings = 0

    async def bind_pod(self, key: PodKey, node: str, annotations: Mapping[str, str] | None = None) -> None:
        self.bindings += 1
        await super().bind_pod(key, node, annotations)


@dataclasses.dataclass
class Replica:
    extender: Extender
    elector: LeaderElector
    writer: CountingWriter
    synced: asyncio.Event
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def bind(self, body: dict[str, Any], node: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        meta = body["metadata"]
        args = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
        response = await self.extender.client.post("/bind", json=args, headers=headers or {})
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer

    async def readiness(self) -> tuple[int, str]:
        response = await self.extender.client.get("/readyz")
        return response.status, await response.text()


@pytest.fixture()
async def replicas(api: KubeApi, kube: kmock.KubernetesEmulator) -> AsyncIterator[tuple[Replica, Replica]]:
    """Replica a, then b, each an extender app on its own port with an elector on the one Lease in kmock."""
    async with contextlib.AsyncExitStack() as stack:
        made = [await stack.enter_async_context(replica(api, kube, name)) for name in ("extender-a", "extender-b")]
        yield made[0], made[1]


@contextlib.asynccontextmanager
async def replica(api: KubeApi, kube: kmock.KubernetesEmulator, name: str) -> AsyncIterator[Replica]:
    config = ElectionConfig(namespace="kube-system", name="flexnpu-extender", identity=name, retry_period_s=0.05)
    elector = LeaderElector(api, config)
    synced = asyncio.Event()
    writer = CountingWriter(api)
    state = ClusterState()
    service = ExtenderService(state, writer, policy="default", leadership=elector, identity=name, synced=synced.is_set)
    async with BindForwarder(elector, identity=name, timeout_s=2.0) as forwarder:
        app = make_app(service, max_body_bytes=4096, forwarder=forwarder)
        async with TestClient(TestServer(app)) as client:
            server = client.server
            assert isinstance(server, TestServer)
            elector.config = dataclasses.replace(config, advertise_url=str(server.make_url("")).rstrip("/"))
            yield Replica(Extender(state, service, client, kube), elector, writer, synced, server)
            await service.drain()


async def elect(leader: Replica, standby: Replica) -> None:
    await leader.elector.step()
    await standby.elector.step()
    assert leader.elector.is_leader and not standby.elector.is_leader


def ready_cluster(leader: Replica, standby: Replica) -> dict[str, Any]:
    """Both replicas synced, one node in both caches, one pending pod in kmock."""
    for r in (leader, standby):
        r.synced.set()
        r.extender.add_node("n1", inventory(1))
    return leader.extender.create_pod(pod("p", 3))


def node_name(kube: kmock.KubernetesEmulator, body: dict[str, Any]) -> object:
    return kube.objects["v1/pods", "default", body["metadata"]["name"]].raw["spec"].get("nodeName")


async def test_the_leader_publishes_its_url_in_the_lease_and_a_standby_reads_it(
    replicas: tuple[Replica, Replica], kube: kmock.KubernetesEmulator
) -> None:
    a, b = replicas
    await elect(a, b)
    assert kube.objects[LEASE].raw["metadata"]["annotations"][ANNOTATION_LEADER_URL] == a.url
    assert (b.elector.leader, b.elector.leader_url) == ("extender-a", a.url)

    await a.elector.release()  # a clean stop: holder and URL go together
    assert not kube.objects[LEASE].raw["metadata"].get("annotations", {}).get(ANNOTATION_LEADER_URL)
    await b.elector.step()
    assert b.elector.is_leader and b.elector.leader_url == b.url
    assert kube.objects[LEASE].raw["metadata"]["annotations"][ANNOTATION_LEADER_URL] == b.url
    await a.elector.step()
    assert (a.elector.is_leader, a.elector.leader, a.elector.leader_url) == (False, "extender-b", b.url)


async def test_a_synced_standby_is_ready(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    await elect(a, b)
    status, text = await b.readiness()
    assert status == 503 and "not synced" in text
    b.synced.set()
    status, text = await b.readiness()
    assert status == 200 and "standby" in text and "extender-a" in text and a.url in text
    a.synced.set()
    assert await a.readiness() == (200, "ready: leader (binds)")


async def test_a_bind_sent_to_the_standby_lands_through_the_leader(
    replicas: tuple[Replica, Replica], kube: kmock.KubernetesEmulator
) -> None:
    a, b = replicas
    await elect(a, b)
    body = ready_cluster(a, b)
    _, filtered = await b.extender.post("filter", {"Pod": body, "NodeNames": ["n1"]})
    assert filtered["NodeNames"] == ["n1"]  # the standby answers filter from its own cache

    assert await b.bind(body, "n1") == {"Error": ""}

    assert node_name(kube, body) == "n1"
    assert (a.writer.bindings, b.writer.bindings) == (1, 0)  # bound once, by the leader
    assert a.extender.service.counters.binds["bound"] == 1
    assert b.extender.service.counters.binds == {"forwarded": 1}
    assert a.extender.state.holding(body["metadata"]["uid"]) is not None  # the leader's reservation


async def test_the_leaders_refusal_comes_back_through_the_standby(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    await elect(a, b)
    ready_cluster(a, b)
    body = a.extender.create_pod(pod("too-big", 30))  # 30 units, one card of 10

    answer = await b.bind(body, "n1")

    assert answer["Error"].startswith("leader extender-a: ") and "n1" in answer["Error"]
    assert a.writer.bindings == 0 and a.extender.service.counters.binds["error"] == 1
    assert b.extender.service.counters.binds == {"forward-error": 1}


async def test_a_forwarded_bind_reaching_a_standby_is_refused_not_forwarded_again(
    replicas: tuple[Replica, Replica], kube: kmock.KubernetesEmulator
) -> None:
    a, b = replicas
    await elect(a, b)
    body = ready_cluster(a, b)

    answer = await b.bind(body, "n1", headers={FORWARDED_HEADER: "extender-c"})

    assert "not the leader" in answer["Error"] and "'extender-c'" in answer["Error"]
    assert "extender-a" in answer["Error"]
    assert a.writer.bindings == b.writer.bindings == 0 and node_name(kube, body) is None
    assert a.extender.service.counters.binds == {} and b.extender.service.counters.binds == {"forward-refused": 1}


async def test_a_forwarded_bind_reaching_the_leader_binds(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    await elect(a, b)
    body = ready_cluster(a, b)
    assert await a.bind(body, "n1", headers={FORWARDED_HEADER: "extender-b"}) == {"Error": ""}
    assert a.writer.bindings == 1


async def test_leader_gone_the_standby_answers_an_error_naming_it(
    replicas: tuple[Replica, Replica], kube: kmock.KubernetesEmulator
) -> None:
    a, b = replicas
    await elect(a, b)
    body = ready_cluster(a, b)
    gone = a.url
    await a.server.close()  # the leader's process is gone; its Lease has not expired yet

    answer = await b.bind(body, "n1")

    assert "could not forward" in answer["Error"] and "extender-a" in answer["Error"] and gone in answer["Error"]
    assert "unreachable" in answer["Error"]
    assert node_name(kube, body) is None and b.extender.service.counters.binds == {"forward-error": 1}


async def test_no_leader_known_the_standby_is_not_ready_and_answers_an_error(
    replicas: tuple[Replica, Replica],
) -> None:
    _, b = replicas
    b.synced.set()
    status, text = await b.readiness()
    assert status == 503 and "no leader" in text
    answer = await b.bind(pod("p", 3), "n1")
    assert "could not forward" in answer["Error"] and "no leader" in answer["Error"]


async def test_a_leader_publishing_no_url_leaves_the_standby_unready(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    a.elector.config = dataclasses.replace(a.elector.config, advertise_url="")
    await elect(a, b)
    b.synced.set()
    status, text = await b.readiness()
    assert status == 503 and "publishes no URL" in text
    assert "publishes no URL" in (await b.bind(pod("p", 3), "n1"))["Error"]


@pytest.mark.parametrize(
    "hostile",
    ["http://10.0.0.1", "file:///etc/passwd", "http://10.0.0.1:8888/bind", "http://u:p@10.0.0.1:8888", "x" * 600],
)
async def test_a_lease_url_that_is_not_host_and_port_is_ignored_with_a_log_line(
    replicas: tuple[Replica, Replica],
    kube: kmock.KubernetesEmulator,
    caplog: pytest.LogCaptureFixture,
    hostile: str,
) -> None:
    a, b = replicas
    await elect(a, b)
    kube.objects[LEASE].patch({"metadata": {"annotations": {ANNOTATION_LEADER_URL: hostile}}})
    b.synced.set()
    with caplog.at_level(logging.WARNING, logger="flexnpu.extender.leader"):
        await b.elector.step()
        await b.elector.step()
    assert b.elector.leader == "extender-a" and b.elector.leader_url == ""
    lines = [r for r in caplog.records if "ignoring the holder's URL" in r.getMessage()]
    assert len(lines) == 1  # once, not every retry period
    assert (await b.readiness())[0] == 503


async def test_a_lease_annotation_of_the_wrong_type_is_ignored(
    replicas: tuple[Replica, Replica], kube: kmock.KubernetesEmulator
) -> None:
    a, b = replicas
    await elect(a, b)
    kube.objects[LEASE].patch({"metadata": {"annotations": {ANNOTATION_LEADER_URL: None}}})
    kube.objects[LEASE].patch({"metadata": {"annotations": {ANNOTATION_LEADER_URL: {"url": a.url}}}})
    await b.elector.step()
    assert b.elector.leader_url == ""


async def test_a_bind_body_over_the_limit_is_refused_by_the_standby_before_forwarding(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await elect(a, b)
    ready_cluster(a, b)
    big = {"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "n1", "Padding": "x" * 8000}
    response = await b.extender.client.post("/bind", data=json.dumps(big), headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert a.extender.service.counters.binds == {} and b.extender.service.counters.binds == {}


class FakeLeader:
    """A leader that answers every bind with ``status`` and ``body`` (or never, while ``hold`` is unset)."""

    def __init__(self, status: int, body: bytes, *, hold: bool = False) -> None:
        self.status, self.body = status, body
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.headers: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(request.headers.get(FORWARDED_HEADER))
        await self.release.wait()
        return web.Response(body=self.body, status=self.status, content_type="application/json")


@dataclasses.dataclass
class FixedLocation:
    leader_url: str
    is_leader: bool = False
    leader: str = "extender-x"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"Error":""}', ""),
        (200, b'{"Error":"node n1: busy"}', "leader extender-x: node n1: busy"),
        (500, b'{"Error":"internal error in bind: boom"}', "leader extender-x answered HTTP 500: internal error"),
        (200, b"<html>proxy</html>", "answered HTTP 200 without an ExtenderBindingResult"),
        (200, b'{"Error": 7}', "without an ExtenderBindingResult"),
        (200, b"[" * 100_000, "answered too much"),
        (502, b"", "answered HTTP 502 without"),
    ],
)
async def test_what_the_leader_answers_is_what_the_standby_answers(status: int, body: bytes, expected: str) -> None:
    fake = FakeLeader(status, body)
    app = web.Application()
    app.router.add_post("/bind", fake.handle)
    async with TestServer(app) as server:
        location = FixedLocation(str(server.make_url("")).rstrip("/"))
        async with BindForwarder(location, identity="extender-y", timeout_s=2.0) as forwarder:
            answer = await forwarder.forward({"PodName": "p", "PodNamespace": "d", "PodUID": "u", "Node": "n1"})
    assert (answer["Error"] == "") if not expected else (expected in answer["Error"])
    assert fake.headers == ["extender-y"]


async def test_a_leader_slower_than_the_timeout_is_an_error_before_the_schedulers_own() -> None:
    fake = FakeLeader(200, b'{"Error":""}', hold=True)
    app = web.Application()
    app.router.add_post("/bind", fake.handle)
    async with TestServer(app) as server:
        location = FixedLocation(str(server.make_url("")).rstrip("/"))
        async with BindForwarder(location, identity="extender-y", timeout_s=0.2) as forwarder:
            answer = await forwarder.forward({"PodName": "p", "PodNamespace": "d", "PodUID": "u", "Node": "n1"})
        fake.release.set()
    assert "did not answer within 0.2 s" in answer["Error"]


@pytest.mark.parametrize(
    ("values", "url"),
    [
        ({}, ""),
        ({"advertise_host": "10.1.2.3"}, "http://10.1.2.3:8888"),
        ({"advertise_host": "fd00::7", "listen": "[::]:9000"}, "http://[fd00::7]:9000"),
        (
            {"advertise_url": "https://ext-0.ext.ns.svc:8443/", "advertise_host": "10.1.2.3"},
            "https://ext-0.ext.ns.svc:8443",
        ),
    ],
)
def test_the_advertised_url_comes_from_the_settings(values: dict[str, str], url: str) -> None:
    assert advertise_url(ExtenderSettings(**values)) == url  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"advertise_url": "http://10.1.2.3"}, "advertise_url"),
        ({"advertise_url": "http://10.1.2.3:8888/extender"}, "advertise_url"),
        ({"advertise_host": "10.1.2.3:8888"}, "advertise_host"),
        ({"advertise_host": "not a host"}, "advertise_host"),
        ({"forward_timeout": 0.0}, "forward_timeout"),
    ],
)
def test_an_unusable_advertise_setting_is_refused_naming_it(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ExtenderSettings(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_two_extender_processes_bind_through_the_leader(kube: kmock.KubernetesEmulator) -> None:
    """``flexnpu extender``'s wiring: two serve() loops on real ports, advertising 127.0.0.1, one Lease in kmock."""
    kube.objects["v1/nodes", None, "n1"] = node("n1", inventory(1))
    body = pod("p", 3)
    kube.objects["v1/pods", "default", "p"] = body
    ports = [free_port(), free_port()]
    stop = asyncio.Event()
    config = KubeConfig(server=str(kube.url).rstrip("/"), namespace="kube-system")

    def settings(i: int) -> ExtenderSettings:
        return ExtenderSettings(
            listen=f"127.0.0.1:{ports[i]}",
            identity=f"extender-{i}",
            advertise_host="127.0.0.1",
            retry_period=0.05,
            renew_deadline=1.0,
            lease_duration=2.0,
        )

    first = asyncio.create_task(serve(settings(0), config, stop))
    async with aiohttp.ClientSession() as http:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        await ready(http, urls[0], "leader")
        second = asyncio.create_task(serve(settings(1), config, stop))
        try:
            await ready(http, urls[1], "standby")
            args = {"PodName": "p", "PodNamespace": "default", "PodUID": body["metadata"]["uid"], "Node": "n1"}
            async with http.post(urls[1] + "/bind", json=args) as response:
                assert await response.json() == {"Error": ""}
            assert node_name(kube, body) == "n1"
            async with http.get(urls[0] + "/metrics") as response:
                assert 'flexnpu_extender_binds_total{outcome="bound"} 1.0' in await response.text()
        finally:
            stop.set()
            await asyncio.gather(first, second)


async def ready(http: aiohttp.ClientSession, url: str, role: str) -> None:
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as response:
                    if response.status == 200 and role in await response.text():
                        return
            await asyncio.sleep(0.02)
