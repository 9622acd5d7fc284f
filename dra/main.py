"""``flexnpu dra-plugin``: the DRA kubelet plugin of driver npu.flexnpu.io (prepare and unprepare claims).

Settings come from flags > FLEXNPU_DRA_* variables > ``--config`` file. A bad setting exits 2 with one line
naming it; an unreadable checkpoint or a first card scan that fails exits 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from flexnpu import names
from flexnpu.cards import Card
from flexnpu.containeredits import NodeLayout
from flexnpu.daemonclient import DaemonClient
from flexnpu.discovery import DiscoveryError, Scanner, scanner_for
from flexnpu.dra.cdi import CdiDir
from flexnpu.dra.checkpoint import Checkpoint
from flexnpu.dra.kube import ClaimApi
from flexnpu.dra.plugin import DraPlugin
from flexnpu.dra.server import Servers
from flexnpu.dra.settings import DEFAULT_NPU_SMI, ENV_PREFIX, DraSettings
from flexnpu.dra.slices import SliceError, SlicePublisher
from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.preloadfile import write_preload_file
from flexnpu.settings import describe, load_settings
from flexnpu.units import UnitsConfig

log = logging.getLogger("flexnpu.dra")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexnpu dra-plugin", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="YAML/JSON settings file (flags and env override it)")
    p.add_argument("--node-name", help="this node's name (default: env FLEXNPU_DRA_NODE_NAME)")
    p.add_argument("--registration-socket", type=Path, help="kubelet plugin registration socket")
    p.add_argument("--plugin-socket", type=Path, help="the DRA service socket")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file of the prepared claims")
    p.add_argument("--cdi-dir", type=Path, help="CDI spec directory (default /var/run/cdi)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--npu-smi", metavar="CMD", help=f"command printing 'npu-smi info' ({DEFAULT_NPU_SMI!r})")
    source.add_argument("--inventory", type=Path, metavar="FILE", help="JSON/YAML card list instead of npu-smi")
    source.add_argument("--dev-root", type=Path, metavar="DIR", help="scan DIR/davinci<N> (with --card-model)")
    p.add_argument("--units-per-card", type=int, metavar="U", help="units per card (default 10)")
    p.add_argument("--daemon-url", help="flexnpud's registration API (default http://127.0.0.1:8765)")
    p.add_argument("--daemon-token-file", type=Path, help="file holding flexnpud's bearer token")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--shim-socket-dir", help=f"host directory of flexnpud's grant socket ({names.SHIM_SOCKET_DIR})")
    p.add_argument("--interposer-host-path", help=f"host path of libflexnpu.so ({names.INTERPOSER_HOST_PATH})")
    p.add_argument(
        "--preload-host-file",
        help=f"host file mounted onto /etc/ld.so.preload, written at start ({names.PRELOAD_HOST_FILE})",
    )
    p.add_argument("--log-level", help="debug, info, warning or error")
    return p


def load(argv: Sequence[str]) -> DraSettings:
    args = vars(parser().parse_args(argv))
    config = args.pop("config")
    return load_settings(DraSettings, flags=args, env=os.environ, file=config, env_prefix=ENV_PREFIX)


class _Cards:
    """The last good scan: a failed rescan keeps the cards running pods use."""

    def __init__(self, scanner: Scanner) -> None:
        self._scanner = scanner
        self.cards: list[Card] = scanner.scan()

    def __call__(self) -> list[Card]:
        try:
            self.cards = self._scanner.scan()
        except DiscoveryError as exc:
            log.error("discovery: %s", exc)
        return self.cards


def publish_slices(publisher: SlicePublisher, cards: Callable[[], Sequence[Card]]) -> bool:
    """One round of the slice loop: scan, publish what changed; False when the API refused or was unreachable."""
    try:
        plan = publisher.publish(cards())
    except SliceError as exc:
        log.warning("ResourceSlice: %s (retrying)", exc)
        return False
    except ValidationError as exc:
        log.error("ResourceSlice not published: %s (the last published slice stays)", exc)
        return True
    if not plan.empty:
        log.info(
            "ResourceSlice published: %d created, %d updated, %d deleted",
            len(plan.create),
            len(plan.update),
            len(plan.delete),
        )
    return True


def slice_loop(
    publisher: SlicePublisher,
    cards: Callable[[], Sequence[Card]],
    interval: float,
    stop: threading.Event,
    retry: float = 1.0,
) -> None:
    """Publish at start, then every ``interval`` seconds; a failed round retries sooner (``retry``, doubling)."""
    delay = retry
    while not stop.is_set():
        if publish_slices(publisher, cards):
            delay = retry
            stop.wait(interval)
        else:
            stop.wait(min(delay, interval))
            delay *= 2


def build(settings: DraSettings) -> tuple[Servers, Callable[[threading.Event], None]]:
    """The gRPC servers and the slice loop (run it in a thread with the stop event)."""
    scanner = scanner_for(settings.npu_smi, settings.inventory, settings.dev_root, settings.card_model, DEFAULT_NPU_SMI)
    layout = NodeLayout(
        units_per_card=settings.units_per_card,
        shim_socket_dir=settings.shim_socket_dir,
        shim_runtime_dir=settings.shim_runtime_dir,
        python_path=settings.python_path,
        interposer=settings.interposer,
        interposer_host_path=settings.interposer_host_path,
        interposer_pod_path=settings.interposer_pod_path,
        preload_host_file=settings.preload_host_file,
        slot_mount=True,  # NodePrepareResources registers before it writes the CDI spec: the slot exists
    )
    write_preload_file(layout)
    cards = _Cards(scanner)
    claims = ClaimApi.connect(settings.node_name, settings.kubeconfig)
    publisher = SlicePublisher(
        claims.api_client, settings.node_name, names.DRA_DRIVER, UnitsConfig(settings.units_per_card)
    )
    plugin = DraPlugin(
        pool=settings.node_name,
        cards=cards,
        layout=layout,
        claims=claims,
        daemon=DaemonClient(settings.daemon_url, token=settings.token),
        cdi=CdiDir(settings.cdi_dir),
        checkpoint=Checkpoint(settings.checkpoint),
    )
    servers = Servers(plugin, settings.registration_socket, settings.plugin_socket)
    return servers, functools.partial(slice_loop, publisher, cards, settings.rescan_interval)


def main(argv: Sequence[str]) -> int:
    try:
        settings = load(argv)
    except FlexnpuError as exc:
        print(f"flexnpu dra-plugin: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("settings: %s", describe(settings))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        servers, loop = build(settings)
    except (FlexnpuError, OSError) as exc:
        print(f"flexnpu dra-plugin: {exc}", file=sys.stderr)
        return 1
    servers.start()
    slices = threading.Thread(target=loop, args=(stop,), name="slices", daemon=True)
    slices.start()
    stop.wait()
    servers.stop()
    slices.join(timeout=5)
    return 0
