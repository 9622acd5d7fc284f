"""Fixtures for the device plugin's tests: a kubelet stub over gRPC, kmock as the API server, short socket dirs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dp_fakes import NODE, KubeEmulator, RunningPlugin, eight_cards, write_inventory

from flexnpu.deviceplugin.kube import KubeApi
from flexnpu.units import UnitsConfig
from flexnpu_testsupport.kubeletstub import StubKubelet


@pytest.fixture
def k8s() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="fdp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[StubKubelet]:
    with StubKubelet(short_dir / "device-plugins") as stub:
        yield stub


@pytest.fixture
def run_plugin(tmp_path: Path, kubelet: StubKubelet) -> Iterator[Any]:
    started: list[RunningPlugin] = []

    def start(
        cards: list[dict[str, Any]] | None = None, *, kube: KubeApi | None = None, units: UnitsConfig | None = None
    ) -> RunningPlugin:
        inventory = write_inventory(tmp_path / "inventory.yaml", cards or eight_cards())
        running = RunningPlugin(inventory, kubelet.directory, kube, units or UnitsConfig()).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def kube_api(k8s: KubeEmulator, tmp_path: Path) -> KubeApi:
    k8s.create_node()
    return KubeApi.connect(NODE, k8s.kubeconfig(tmp_path))
