"""flexnpu in DRA mode on the real components: a second kubelet node, the chart rendered with ``mode: dra``.

The DRA node is a kubelet of its own (ControlPlane.start_node) tainted ``flexnpu.io/dra=true:NoSchedule`` so that
the suite's other pods stay on the device-plugin node. Its release (``flexnpu-dra`` in namespace
``flexnpu-dra``) has the chart's dra-mode RBAC and DeviceClass applied; flexnpud runs as that release's node
DaemonSet pod through the real kubelet, and the kubelet plugin runs as a process with the node ServiceAccount's
token and the chart's args, its kubelet paths pointed at the DRA node's directories. Pods are scheduled by the
plain default-scheduler: in DRA mode the scheduler's own allocator picks the card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from kubernetes import client as k8s
from realk8s_cluster import ControlPlane, KubeletNode
from realk8s_flexnpu import Flexnpu, Manifest, apply, container_args, only, replace_flags
from realk8s_procs import Proc, wait_for

from flexnpu import names

DRA_NODE = "realk8s-dra"
DRA_RELEASE = "flexnpu-dra"
DRA_NAMESPACE = "flexnpu-dra"
DRA_TAINT = {"key": "flexnpu.io/dra", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": DRA_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}
GROUP, VERSION = "resource.k8s.io", "v1"


def dra_values(cards: int) -> dict[str, Any]:
    return {
        "mode": "dra",
        "node": {"hostNetwork": False, "daemon": {"devices": f"sim:910B3x{cards}"}},
    }


class DraStack(Flexnpu):
    """The dra-mode release on the DRA node: DeviceClass, RBAC, flexnpud pod, kubelet plugin process."""

    def __init__(self, cluster: ControlPlane, api: k8s.ApiClient, node: KubeletNode, cards: int) -> None:
        super().__init__(cluster, api, dra_values(cards), release=DRA_RELEASE, namespace=DRA_NAMESPACE, node=node)
        self.cards = cards
        self.plugin: Proc | None = None

    def install(self) -> None:
        self.build_native()
        self.install_rbac_and_crds()
        apply(self.api, [m for m in self.manifests if m["kind"] == "DeviceClass"], self.namespace)
        self.install_daemon_token()
        self.start_daemon()

    def inventory_file(self, cards: Sequence[Mapping[str, Any]]) -> str:
        path = self.work / "inventory.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"cards": [dict(c) for c in cards]}), encoding="utf-8")
        tmp.replace(path)
        return str(path)

    def plugin_args(self, inventory: str) -> list[str]:
        """The chart's kubelet-plugin container args with paths, node, daemon address and credentials adjusted."""
        workload = only(self.manifests, "DaemonSet", "node")
        return replace_flags(
            container_args(workload, DRA_CONTAINER),
            {
                "--node-name": self.node.name,
                "--registration-socket": str(self.node.plugins_registry / f"{names.DRA_DRIVER}-reg.sock"),
                "--plugin-socket": str(self.node.plugins_dir / names.DRA_DRIVER / "dra.sock"),
                "--checkpoint": str(self.node.plugins_dir / names.DRA_DRIVER / "checkpoint.json"),
                "--cdi-dir": str(self.node.cdi_dir),
                "--shim-socket-dir": str(self.socket_dir),
                "--interposer-host-path": str(self.build_native() / "libflexnpu.so"),
                "--preload-host-file": str(self.work / "preload" / "ld.so.preload"),
                "--npu-smi": None,
                "--inventory": inventory,
                "--daemon-url": f"http://127.0.0.1:{self.daemon_port}",
                "--daemon-token-file": str(self.token_file),
                "--kubeconfig": str(self.kubeconfig_for("node")),
            },
        )

    def start_plugin(self, cards: Sequence[Mapping[str, Any]]) -> Proc:
        inventory = self.inventory_file(cards)
        self.plugin = self.cluster.spawn("dra-plugin", [self.flexnpu, *self.plugin_args(inventory)])
        return self.plugin

    def slices(self) -> list[Manifest]:
        """The ResourceSlices of the flexnpu driver on the DRA node."""
        listed: Any = k8s.CustomObjectsApi(self.api).list_cluster_custom_object(
            GROUP, VERSION, "resourceslices", field_selector=f"spec.nodeName={self.node.name}"
        )
        return [s for s in listed["items"] if s["spec"]["driver"] == names.DRA_DRIVER]

    def wait_devices(self, count: int, timeout: float = 120) -> list[Manifest]:
        """The driver's devices on the node once there are ``count`` of them."""

        def published() -> list[Manifest] | None:
            devices = [d for s in self.slices() for d in s["spec"].get("devices", [])]
            return devices if len(devices) == count else None

        return wait_for(f"{count} devices in ResourceSlices", published, timeout, watch=self.cluster.procs)


DRA_CONTAINER = "dra-plugin"
