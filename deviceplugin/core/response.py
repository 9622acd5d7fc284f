"""What a container gets for its cards: the shared container edits of ``flexnpu.containeredits``.

The logic moved to ``flexnpu.containeredits`` so that the DRA kubelet plugin writes the same edits into its CDI
specs; this module keeps the device plugin's names.
"""

from __future__ import annotations

from flexnpu.containeredits import (
    ContainerAllocation,
    DeviceNode,
    Mount,
    NodeLayout,
    Workload,
    container_allocation,
    device_nodes,
    driver_mounts,
    interposer_mounts,
    preload_text,
    shim_envs,
    shim_mounts,
    visible_device_envs,
)

__all__ = [
    "ContainerAllocation",
    "DeviceNode",
    "Mount",
    "NodeLayout",
    "Workload",
    "container_allocation",
    "device_nodes",
    "driver_mounts",
    "interposer_mounts",
    "preload_text",
    "shim_envs",
    "shim_mounts",
    "visible_device_envs",
]
