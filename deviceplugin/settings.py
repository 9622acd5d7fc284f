"""The device plugin's one settings object, built once at start (flags > FLEXNPU_DEVICEPLUGIN_* env > file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

from flexnpu import names
from flexnpu.cards import card_model
from flexnpu.daemonclient import read_token
from flexnpu.errors import ConfigError, ValidationError
from flexnpu.settings import setting
from flexnpu.units import DEFAULT_OVERSUBSCRIPTION, DEFAULT_UNITS_PER_CARD, UnitsConfig

ENV_PREFIX = "FLEXNPU_DEVICEPLUGIN_"
DEFAULT_NPU_SMI = "npu-smi info"


@dataclasses.dataclass(frozen=True)
class DevicePluginSettings:
    """Where kubelet is, how cards are found and cut, and what Allocate injects."""

    node_name: str = setting("", "this node's name (the Downward API's spec.nodeName)")
    kubelet_dir: Path = setting(Path(names.KUBELET_DEVICE_PLUGIN_DIR), "kubelet's device-plugin directory")
    socket_name: str = setting(names.PLUGIN_SOCKET_NAME, "name of this plugin's socket in kubelet_dir")
    npu_smi: str = setting("", f"command whose output is 'npu-smi info' (default discovery: {DEFAULT_NPU_SMI!r})")
    inventory: Path | None = setting(None, "JSON/YAML card list instead of npu-smi (tests, simulated nodes)")
    dev_root: Path | None = setting(None, "scan <dev_root>/davinci<N> instead of npu-smi (needs card_model)")
    card_model: str = setting("910B3", "model of the cards found by the /dev scan")
    units_per_card: int = setting(DEFAULT_UNITS_PER_CARD, "units U per card (1..1000)")
    oversubscription: float = setting(DEFAULT_OVERSUBSCRIPTION, "each card advertises floor(f*U) units (1..16)")
    scan_interval: float = setting(5.0, "seconds between discovery scans (health changes, cards gone)")
    kubeconfig: Path | None = setting(
        None,
        "kubeconfig file; empty: KUBECONFIG, else ~/.kube/config if it exists, else the in-cluster service account",
    )
    kubernetes: bool = setting(True, "use the Kubernetes API (pod handshake, node inventory); false: IDs only")
    cdi: bool = setting(False, f"answer Allocate with CDI names ({names.CDI_KIND}=<index>) instead of devices")
    inject_shim: bool = setting(True, "mount the in-pod runtime and set FLEXNPU_* variables")
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
    claim_wait: float = setting(1.0, "seconds an Allocate waits for the pod's VNpuClaim (its FLEXNPU_ID), 0..30")
    daemon_url: str = setting(
        f"http://127.0.0.1:{names.DAEMON_PORT}",
        "flexnpud's registration API on this node: an Allocate registers the pod's claims there when flexnpud has "
        "no slot for them yet, instead of awaiting the operator (empty: off)",
    )
    daemon_token: str = setting("", "bearer token for flexnpud (prefer daemon_token_file)", secret=True)
    daemon_token_file: Path | None = setting(None, "file holding flexnpud's bearer token (a mounted Secret)")
    slot_mount: bool = setting(
        True,
        "mount the registration's slot file read-write over the read-only shim_socket_dir (libflexnpu maps it "
        "read-write); an Allocate waits up to claim_wait for flexnpud to make it (shim_socket_dir must be mounted)",
    )
    journal: Path | None = setting(
        None,
        "file journaling the handshake's pod writes until they land (they are patched off the Allocate path; "
        "a restart patches what a crash left); empty: kept in memory only",
    )
    claim_cache: bool = setting(
        True, "watch this node's VNpuClaims (the CRD's selectable field spec.nodeName) instead of a list per Allocate"
    )
    metrics_port: int = setting(9401, "port of the Prometheus /metrics endpoint (0: off)")
    metrics_host: str = setting("0.0.0.0", "address of the /metrics endpoint")
    log_level: str = setting("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        sources = [s for s in (self.npu_smi, self.inventory, self.dev_root) if s]
        if len(sources) > 1:
            raise ConfigError("npu_smi/inventory/dev_root", [str(s) for s in sources], "choose one discovery source")
        if self.dev_root is not None:
            card_model(self.card_model, "card_model")
        self.units  # noqa: B018  (validates units_per_card and oversubscription)
        if self.scan_interval <= 0:
            raise ConfigError("scan_interval", self.scan_interval, "must be > 0")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port", self.metrics_port, "must be a port (0: off)")
        if self.kubernetes and not self.node_name:
            raise ConfigError("node_name", self.node_name, "is required with the Kubernetes API (or kubernetes=false)")
        for key in (
            "shim_socket_dir",
            "shim_runtime_dir",
            "interposer_host_path",
            "interposer_pod_path",
            "preload_host_file",
        ):
            _absolute_path(key, getattr(self, key))
        if self.interposer_pod_path == names.PRELOAD_POD_FILE or self.interposer_pod_path.endswith("/"):
            raise ConfigError("interposer_pod_path", self.interposer_pod_path, "must name the library file")
        if self.daemon_url and not self.daemon_url.startswith(("http://", "https://")):
            raise ConfigError("daemon_url", self.daemon_url, "must be an http(s) URL, or empty for none")
        if not 0 <= self.claim_wait <= 30:
            raise ConfigError("claim_wait", self.claim_wait, "must be in 0..30 seconds")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level", self.log_level, "must be debug, info, warning or error")

    def token(self) -> str:
        return read_token(self.daemon_token, self.daemon_token_file)

    @property
    def units(self) -> UnitsConfig:
        try:
            return UnitsConfig(self.units_per_card, self.oversubscription)
        except ValidationError as exc:
            raise ConfigError(exc.field, exc.value, exc.reason) from exc

    @property
    def socket_path(self) -> Path:
        return self.kubelet_dir / self.socket_name

    @property
    def kubelet_socket(self) -> Path:
        return self.kubelet_dir / names.KUBELET_SOCKET_NAME


def _absolute_path(key: str, value: str) -> None:
    """An absolute, normalised path without characters a mount or ld.so.preload would misread."""
    path = PurePosixPath(value)
    if not value.startswith("/") or str(path) != value or ".." in path.parts or any(c in value for c in "\n\r\0 :,"):
        raise ConfigError(key, value, "must be an absolute normalised path without spaces, ':' or ','")
