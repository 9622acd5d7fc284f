"""The DRA kubelet plugin's settings (flags > FLEXNPU_DRA_* env > file), validated once at start."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from flexnpu import names
from flexnpu.daemonclient import read_token
from flexnpu.errors import ConfigError
from flexnpu.settings import setting
from flexnpu.units import DEFAULT_UNITS_PER_CARD, validate_units_per_card

ENV_PREFIX = "FLEXNPU_DRA_"
DEFAULT_NPU_SMI = "npu-smi info"


@dataclasses.dataclass(frozen=True)
class DraSettings:
    node_name: str = setting("", "this node's name, the pool of its ResourceSlice (the Downward API's spec.nodeName)")
    registration_socket: Path = setting(Path(names.DRA_REGISTRATION_SOCKET), "kubelet plugin registration socket")
    plugin_socket: Path = setting(Path(names.DRA_PLUGIN_SOCKET), "the DRA v1 service socket")
    checkpoint: Path = setting(Path(names.DRA_CHECKPOINT), "file recording the prepared claims")
    cdi_dir: Path = setting(Path(names.DRA_CDI_DIR), "CDI spec directory the container runtime reads")
    npu_smi: str = setting("", f"command whose output is 'npu-smi info' (default discovery: {DEFAULT_NPU_SMI!r})")
    inventory: Path | None = setting(None, "JSON/YAML card list instead of npu-smi (tests, simulated nodes)")
    dev_root: Path | None = setting(None, "scan <dev_root>/davinci<N> instead of npu-smi (needs card_model)")
    card_model: str = setting("910B3", "model of the cards found by the /dev scan")
    units_per_card: int = setting(DEFAULT_UNITS_PER_CARD, "units U per card (1..1000)")
    daemon_url: str = setting(f"http://127.0.0.1:{names.DAEMON_PORT}", "flexnpud's registration API on this node")
    daemon_token: str = setting("", "bearer token for flexnpud (prefer daemon_token_file)", secret=True)
    daemon_token_file: Path | None = setting(None, "file holding flexnpud's bearer token (a mounted Secret)")
    kubeconfig: Path | None = setting(None, "kubeconfig file; empty: KUBECONFIG, ~/.kube/config, in-cluster")
    shim_socket_dir: str = setting(names.SHIM_SOCKET_DIR, "host directory of the node daemon's grant socket")
    shim_runtime_dir: str = setting(names.SHIM_RUNTIME_HOST_DIR, "host directory holding the in-pod runtime")
    python_path: bool = setting(
        False,
        "set PYTHONPATH to the in-pod runtime (the Python step-level client); it replaces the image's PYTHONPATH",
    )
    interposer: bool = setting(True, "mount the native interposer and a read-only /etc/ld.so.preload naming it")
    interposer_host_path: str = setting(names.INTERPOSER_HOST_PATH, "host path of libflexnpu.so")
    interposer_pod_path: str = setting(names.INTERPOSER_POD_PATH, "where pods see libflexnpu.so")
    preload_host_file: str = setting(
        names.PRELOAD_HOST_FILE,
        "host file holding interposer_pod_path, mounted onto /etc/ld.so.preload (written at start)",
    )
    rescan_interval: float = setting(10.0, "seconds between card scans; the ResourceSlice follows inventory and health")
    log_level: str = setting("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ConfigError("node_name", self.node_name, "is required (the pool the scheduler allocates from)")
        validate_units_per_card(self.units_per_card)
        if not (math.isfinite(self.rescan_interval) and 0.1 <= self.rescan_interval <= 3600):
            raise ConfigError("rescan_interval", str(self.rescan_interval), "must be a number of seconds in 0.1..3600")
        if not self.daemon_url.startswith(("http://", "https://")):
            raise ConfigError("daemon_url", self.daemon_url, "must be an http(s) URL")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level", self.log_level, "must be debug, info, warning or error")

    def token(self) -> str:
        return read_token(self.daemon_token, self.daemon_token_file)
