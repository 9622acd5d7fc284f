"""Test helpers: inventory files, a plugin served to the stub kubelet; the API emulator re-exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flexnpu.deviceplugin.core.response import NodeLayout
from flexnpu.deviceplugin.kube import KubeApi
from flexnpu.deviceplugin.plugin import VnpuPlugin
from flexnpu.deviceplugin.server import PluginServer
from flexnpu.discovery import InventoryFileScanner
from flexnpu.units import UnitsConfig
from flexnpu_testsupport.kubeemulator import NODE, KubeEmulator

__all__ = ["NODE", "KubeEmulator", "RunningPlugin", "eight_cards", "write_inventory"]


def write_inventory(path: Path, cards: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"cards": cards}))
    return path


def eight_cards(health: dict[int, str] | None = None) -> list[dict[str, Any]]:
    health = health or {}
    return [
        {"index": i, "model": "910B3", "bus_id": f"0000:{0xC1 + i:02X}:00.0", "health": health.get(i, "Healthy")}
        for i in range(8)
    ]


class RunningPlugin:
    """A plugin served to the stub kubelet, stopped at the end of the test."""

    def __init__(self, inventory: Path, kubelet_dir: Path, kube: KubeApi | None, units: UnitsConfig) -> None:
        self.plugin = VnpuPlugin(InventoryFileScanner(inventory), units, NodeLayout(units.units_per_card), kube=kube)
        self.server = PluginServer(self.plugin, kubelet_dir, watch_interval=0.05)

    def start(self) -> RunningPlugin:
        self.plugin.rescan()
        self.server.start()
        return self

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the handshake's writes (patched off the Allocate path) have landed on the API."""
        assert self.plugin.writer is not None and self.plugin.writer.flush(timeout), "handshake writes pending"

    def stop(self) -> None:
        self.server.stop()
        if self.plugin.writer is not None:
            self.plugin.writer.stop()
        if self.plugin.kube is not None:
            self.plugin.kube.close()
