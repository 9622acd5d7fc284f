"""The DRA plugin as kubelet drives it: a gRPC client on the registration and service unix sockets.

The API server and flexnpud are doubles (``dra_fakes``); the CDI directory and the checkpoint are real files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dra_fakes import CARDS, FakeClaims, FakeDaemon, claim, result, vnpu_config

from flexnpu import names
from flexnpu.containeredits import NodeLayout
from flexnpu.daemonclient import DaemonRefused, DaemonUnreachable
from flexnpu.dra.cdi import CdiDir
from flexnpu.dra.checkpoint import Checkpoint, CheckpointError
from flexnpu.dra.plugin import DraPlugin
from flexnpu.dra.server import Servers
from flexnpu.priority import Priority
from flexnpu.protos import dra_v1_pb2 as dra
from flexnpu.protos import dra_v1_pb2_grpc as dra_grpc
from flexnpu.protos import pluginregistration_v1_pb2 as reg
from flexnpu.protos import pluginregistration_v1_pb2_grpc as reg_grpc


class Node:
    """A plugin served on short unix sockets; ``restart`` builds a new one from the same files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.claims = FakeClaims()
        self.daemon = FakeDaemon()
        self.cdi_dir = root / "cdi"
        self.checkpoint = root / "plugin" / "checkpoint.json"
        self.servers: Servers | None = None
        self.channels: list[grpc.Channel] = []
        self.start()

    def start(self) -> None:
        plugin = DraPlugin(
            pool="node-a",
            cards=lambda: CARDS,
            layout=NodeLayout(units_per_card=10),
            claims=self.claims,
            daemon=self.daemon,
            cdi=CdiDir(self.cdi_dir),
            checkpoint=Checkpoint(self.checkpoint),
        )
        self.servers = Servers(plugin, self.root / "reg.sock", self.root / "plugin" / "dra.sock")
        self.servers.start()

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels = []
        if self.servers is not None:
            self.servers.stop()
            self.servers = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _channel(self, socket: str) -> grpc.Channel:
        channel = grpc.insecure_channel(f"unix://{self.root / socket}")
        self.channels.append(channel)
        return channel

    def prepare(self, *claims: tuple[str, str]) -> dra.NodePrepareResourcesResponse:
        stub = dra_grpc.DRAPluginStub(self._channel("plugin/dra.sock"))
        request = dra.NodePrepareResourcesRequest(
            claims=[dra.Claim(namespace="default", name=n, uid=u) for n, u in claims]
        )
        return stub.NodePrepareResources(request, timeout=10)

    def unprepare(self, *claims: tuple[str, str]) -> dra.NodeUnprepareResourcesResponse:
        stub = dra_grpc.DRAPluginStub(self._channel("plugin/dra.sock"))
        request = dra.NodeUnprepareResourcesRequest(
            claims=[dra.Claim(namespace="default", name=n, uid=u) for n, u in claims]
        )
        return stub.NodeUnprepareResources(request, timeout=10)

    def info(self) -> reg.PluginInfo:
        return reg_grpc.RegistrationStub(self._channel("reg.sock")).GetInfo(reg.InfoRequest(), timeout=10)


@pytest.fixture
def node() -> Iterator[Node]:
    root = Path(tempfile.mkdtemp(prefix="fdra-", dir="/tmp"))
    running = Node(root)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_registration_names_the_driver_its_socket_and_v1(node: Node) -> None:
    info = node.info()
    assert (info.type, info.name) == ("DRAPlugin", names.DRA_DRIVER)
    assert info.endpoint == str(node.root / "plugin" / "dra.sock")
    assert list(info.supported_versions) == ["v1.DRAPlugin"]
    stub = reg_grpc.RegistrationStub(node._channel("reg.sock"))
    stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=10)
    assert node.servers is not None and node.servers.registration.registered is True


def test_prepare_registers_writes_the_cdi_spec_and_answers_its_ids(node: Node) -> None:
    node.claims.add(claim(result(units="3", memory="16Gi", device="npu-2"), config=[vnpu_config()]))
    answer = node.prepare(("c1", "uid-1")).claims["uid-1"]
    assert answer.error == ""
    (device,) = answer.devices
    assert (list(device.request_names), device.pool_name, device.device_name) == (["npu"], "node-a", "npu-2")
    assert list(device.cdi_device_ids) == ["flexnpu.io/npu=uid-1-npu"]
    (registration,) = node.daemon.registrations.values()
    assert (registration.npu, registration.aicore_alloc, registration.memory_alloc) == (2, 3, 16384)
    assert (registration.priority, registration.entity, registration.pod_uid) == (
        Priority.HIGH,
        "default/p1",
        "uid-p1",
    )
    spec = json.loads((node.cdi_dir / "flexnpu.io-npu_uid-1.json").read_text())
    assert spec["devices"][0]["name"] == "uid-1-npu"


def test_prepare_twice_and_after_a_restart_answers_the_same_and_registers_once(node: Node) -> None:
    node.claims.add(claim(result(units="2", share_id="abc")))
    first = node.prepare(("c1", "uid-1")).claims["uid-1"]
    assert node.prepare(("c1", "uid-1")).claims["uid-1"] == first
    node.restart()
    node.claims.objects.clear()  # a restarted plugin must not need the API for a prepared claim
    assert node.prepare(("c1", "uid-1")).claims["uid-1"] == first
    assert node.daemon.calls == 1
    assert len(node.daemon.registrations) == 1


def test_unprepare_leaks_nothing_and_is_idempotent(node: Node) -> None:
    node.claims.add(claim(result(device="npu-0"), result(device="npu-1")))
    assert node.prepare(("c1", "uid-1")).claims["uid-1"].error == ""
    assert len(node.daemon.registrations) == 2
    node.restart()
    for _ in range(2):
        assert node.unprepare(("c1", "uid-1")).claims["uid-1"].error == ""
    assert node.daemon.registrations == {}
    assert list(node.cdi_dir.iterdir()) == []
    assert json.loads(node.checkpoint.read_text())["claims"] == {}


def test_a_refused_claim_fails_alone_with_its_reason_and_an_event(node: Node) -> None:
    node.claims.add(claim(result(units="11"), uid="uid-bad", name="bad"))
    node.claims.add(claim(result(units="1")))
    response = node.prepare(("bad", "uid-bad"), ("c1", "uid-1"))
    bad = response.claims["uid-bad"]
    assert "consumedCapacity.units='11'" in bad.error and not bad.devices
    assert response.claims["uid-1"].error == ""
    assert node.claims.events == [("default/bad", bad.error.split(" refused: ", 1)[1])]
    assert list(node.daemon.registrations) == ["dra.uid-1.npu.0"]


def test_a_claim_whose_uid_changed_is_not_prepared(node: Node) -> None:
    node.claims.add(claim(result(units="1"), uid="uid-new"))
    answer = node.prepare(("c1", "uid-old")).claims["uid-old"]
    assert "uid-old" in answer.error
    assert node.daemon.registrations == {}


@pytest.mark.parametrize("failure", [DaemonUnreachable("down"), DaemonRefused(409, "memory would pass HBM")])
def test_a_daemon_failure_undoes_the_claim_and_a_retry_starts_clean(node: Node, failure: Exception) -> None:
    node.claims.add(claim(result(device="npu-0"), result(device="npu-1")))
    original = node.daemon.register

    def second_fails(registration: object) -> None:
        if node.daemon.registrations:
            raise failure
        original(registration)  # type: ignore[arg-type]

    node.daemon.register = second_fails  # type: ignore[method-assign]
    assert str(failure) in node.prepare(("c1", "uid-1")).claims["uid-1"].error
    assert node.daemon.registrations == {}
    assert not node.cdi_dir.exists() or list(node.cdi_dir.iterdir()) == []
    assert bool(node.claims.events) is isinstance(failure, DaemonRefused)
    node.daemon.register = original  # type: ignore[method-assign]
    assert node.prepare(("c1", "uid-1")).claims["uid-1"].error == ""
    assert len(node.daemon.registrations) == 2


def test_an_unreadable_checkpoint_stops_the_plugin(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text('{"version": 1, "claims": {"u": {"namespace": 3}}}')
    with pytest.raises(CheckpointError, match="namespace"):
        Checkpoint(path)
