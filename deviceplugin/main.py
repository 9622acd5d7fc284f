"""``flexnpu deviceplugin``: advertise huawei.com/vnpu units to kubelet and allocate the cards pods were given.

Settings come from flags > FLEXNPU_DEVICEPLUGIN_* variables > ``--config`` file, are validated once and
logged. A bad setting or a first scan that finds no card exits non-zero with one line naming the problem.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import typing
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from flexnpu import names
from flexnpu.daemonclient import DaemonClient
from flexnpu.deviceplugin.adapters.nodelabels import NodeLabeller
from flexnpu.deviceplugin.claimcache import ClaimCache
from flexnpu.deviceplugin.core.nodelabels import node_labels
from flexnpu.deviceplugin.core.response import NodeLayout
from flexnpu.deviceplugin.handshake import HandshakeWriter
from flexnpu.deviceplugin.kube import KubeApi
from flexnpu.deviceplugin.metrics import Metrics
from flexnpu.deviceplugin.nudge import ReleaseNudger
from flexnpu.deviceplugin.plugin import VnpuPlugin
from flexnpu.deviceplugin.server import PluginServer
from flexnpu.deviceplugin.settings import DEFAULT_NPU_SMI, ENV_PREFIX, DevicePluginSettings
from flexnpu.discovery import DiscoveryError, scanner_for
from flexnpu.errors import FlexnpuError
from flexnpu.preloadfile import write_preload_file
from flexnpu.settings import describe, load_settings

log = logging.getLogger("flexnpu.deviceplugin")
JOURNAL_FLUSH_S = 10.0
DAEMON_TIMEOUT_S = 2.0  # one register with flexnpud on this node, inside an Allocate


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """One line naming the problem, not argparse's usage block."""
        self.exit(2, f"{self.prog}: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flexnpu deviceplugin", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="YAML/JSON settings file (flags and env override it)")
    p.add_argument("--kubelet-dir", type=Path, help="kubelet's device-plugin directory")
    p.add_argument("--node-name", help="this node's name (default: env FLEXNPU_DEVICEPLUGIN_NODE_NAME)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--npu-smi", metavar="CMD", help=f"command printing 'npu-smi info' ({DEFAULT_NPU_SMI!r})")
    source.add_argument("--inventory", type=Path, metavar="FILE", help="JSON/YAML card list instead of npu-smi")
    source.add_argument("--dev-root", type=Path, metavar="DIR", help="scan DIR/davinci<N> (with --card-model)")
    p.add_argument("--card-model", help="model of cards found by --dev-root (910B1..910B4)")
    p.add_argument("--units-per-card", type=int, metavar="U", help="units per card (1..1000, default 10)")
    p.add_argument("--oversubscription", type=float, metavar="F", help="advertise floor(F*U) units per card")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument(
        "--no-kubernetes",
        dest="kubernetes",
        action="store_const",
        const=False,
        help="no API server: no pod handshake, no node annotation (cards from device IDs only)",
    )
    p.add_argument("--cdi", action="store_const", const=True, help="answer Allocate with CDI device names")
    p.add_argument(
        "--daemon-url",
        help="flexnpud's registration API, where Allocate registers claims it has no slot for "
        f"(default http://127.0.0.1:{names.DAEMON_PORT}; empty: off)",
    )
    p.add_argument("--daemon-token-file", type=Path, help="file holding flexnpud's bearer token")
    p.add_argument("--scan-interval", type=float, metavar="S", help="seconds between discovery scans")
    p.add_argument("--journal", type=Path, metavar="FILE", help="journal of the handshake's pod writes (default: none)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0: off; default 9401)")
    p.add_argument("--log-level", help="debug, info, warning or error")
    return p


def load(argv: Sequence[str]) -> DevicePluginSettings:
    args = vars(parser().parse_args(argv))
    config = args.pop("config")
    return load_settings(DevicePluginSettings, flags=args, env=os.environ, file=config, env_prefix=ENV_PREFIX)


def build(settings: DevicePluginSettings) -> tuple[VnpuPlugin, PluginServer]:
    scanner = scanner_for(settings.npu_smi, settings.inventory, settings.dev_root, settings.card_model, DEFAULT_NPU_SMI)
    kube = KubeApi.connect(settings.node_name, settings.kubeconfig) if settings.kubernetes else None
    layout = NodeLayout(
        units_per_card=settings.units_per_card,
        use_cdi=settings.cdi,
        inject_shim=settings.inject_shim,
        shim_socket_dir=settings.shim_socket_dir,
        shim_runtime_dir=settings.shim_runtime_dir,
        python_path=settings.python_path,
        interposer=settings.interposer,
        interposer_host_path=settings.interposer_host_path,
        interposer_pod_path=settings.interposer_pod_path,
        preload_host_file=settings.preload_host_file,
        slot_mount=settings.slot_mount,
    )
    metrics = Metrics()
    writer = None if kube is None else HandshakeWriter(kube, settings.journal, metrics.handshake_pending.set)
    claims = ClaimCache(kube, released=ReleaseNudger(kube)) if kube is not None and settings.claim_cache else None
    plugin = VnpuPlugin(
        scanner,
        settings.units,
        layout,
        kube=kube,
        metrics=metrics,
        claim_wait=settings.claim_wait,
        writer=writer,
        claims=claims,
        daemon=DaemonClient(settings.daemon_url, token=settings.token, timeout=DAEMON_TIMEOUT_S)
        if settings.daemon_url and settings.inject_shim
        else None,
    )
    return plugin, PluginServer(plugin, settings.kubelet_dir, settings.socket_name)


def run(settings: DevicePluginSettings, stop: threading.Event) -> int:
    plugin, server = build(settings)
    labeller = NodeLabeller.connect(settings.node_name, settings.kubeconfig) if settings.kubernetes else None
    plugin.rescan()
    write_preload_file(plugin.layout)
    label_node(labeller, plugin)
    plugin.metrics.serve(settings.metrics_host, settings.metrics_port)
    # Writes a crash left in the journal land on the pods before kubelet can ask about them.
    if plugin.writer is not None and plugin.writer.start() and not plugin.writer.flush(JOURNAL_FLUSH_S):
        log.warning("journal: writes still pending after %.0fs, serving anyway", JOURNAL_FLUSH_S)
    if plugin.claims is not None:
        plugin.claims.start()
    server.start()
    try:
        while not stop.wait(settings.scan_interval):
            _rescan(plugin)
            label_node(labeller, plugin)
    finally:
        server.stop()
        if plugin.claims is not None:
            plugin.claims.stop()
        if plugin.writer is not None:
            plugin.writer.stop()
        plugin.metrics.close()
        if plugin.kube is not None:
            plugin.kube.close()
        if labeller is not None:
            labeller.close()
    return 0


def label_node(labeller: NodeLabeller | None, plugin: VnpuPlugin) -> None:
    """The node's card model, card count and units per card as labels (written only when they change)."""
    if labeller is not None:
        labeller.publish(node_labels(plugin.cards, plugin.units))


def _rescan(plugin: VnpuPlugin) -> None:
    try:
        plugin.rescan()
        plugin.refresh_usage()
    except DiscoveryError as exc:
        # Keep the last known cards: a transient npu-smi failure must not take units away from running pods.
        log.error("discovery: %s", exc)


def main(argv: Sequence[str]) -> int:
    try:
        settings = load(argv)
    except FlexnpuError as exc:
        print(f"flexnpu deviceplugin: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("settings: %s", describe(settings))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(settings, stop)
    except (FlexnpuError, OSError) as exc:
        print(f"flexnpu deviceplugin: {exc}", file=sys.stderr)
        return 1
