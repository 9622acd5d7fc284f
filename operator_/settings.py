"""The operator's one settings object, built once at start (flags > FLEXNPU_OPERATOR_* env > file) and logged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flexnpu import names
from flexnpu.errors import ConfigError
from flexnpu.operator.core.daemons import AddressKind, parse_selector
from flexnpu.settings import setting

ENV_PREFIX = "FLEXNPU_OPERATOR_"


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    """How the operator finds node daemons, how hard it retries, and how kopf runs it."""

    daemon_selector: str = setting(
        "app.kubernetes.io/name=flexnpu,app.kubernetes.io/component=node",
        "labels of the flexnpu node DaemonSet's pods (key=value,...)",
    )
    daemon_namespace: str = setting("", "namespace of the node daemon pods (empty: any)")
    daemon_port: int = setting(names.DAEMON_PORT, "flexnpud's port when its pod names no port daemon_port_name")
    daemon_port_name: str = setting(names.DAEMON_PORT_NAME, "name of the daemon pod's container port")
    daemon_address: AddressKind = setting(AddressKind.POD_IP, "pod-ip, or host-ip for a daemon bound to the node")
    daemon_scheme: str = setting("http", "http or https")
    daemon_url_template: str = setting(
        "", "static daemon URL, '{node}' replaced by the node name; replaces the pod lookup"
    )
    daemon_token: str = setting("", "bearer token for the daemon (prefer daemon_token_file)", secret=True)
    daemon_token_file: Path | None = setting(None, "file holding the daemon's bearer token (a mounted Secret)")
    daemon_timeout: float = setting(5.0, "seconds per daemon request")
    retry_attempts: int = setting(3, "tries per daemon call on transient errors before kopf retries the handler")
    retry_base: float = setting(0.1, "first backoff delay in seconds (doubles each try)")
    retry_cap: float = setting(5.0, "longest backoff delay in seconds")
    handler_retry_delay: float = setting(5.0, "seconds before kopf retries a claim whose daemon was unreachable")
    resync_interval: float = setting(30.0, "seconds between re-checks of every claim (repairs drift)")
    node_list_max_age: float = setting(
        5.0,
        "seconds a node's registrations, listed by one claim's re-check, serve the re-checks of its other claims "
        "(at most half of resync_interval; 0: every re-check lists the node)",
    )
    release_gone_pods: bool = setting(True, "deregister claims whose podRef pod no longer exists")
    collect_orphans: bool = setting(True, "deregister vnc.* registrations no claim owns any more")
    metrics_port: int = setting(9108, "port of the Prometheus /metrics endpoint (0: off)")
    metrics_host: str = setting("0.0.0.0", "address of the /metrics endpoint")
    api_server: str = setting(
        "", "Kubernetes API URL without auth (tests, benchmarks); empty: kubeconfig or in-cluster service account"
    )

    def __post_init__(self) -> None:
        parse_selector(self.daemon_selector)
        if self.daemon_scheme not in ("http", "https"):
            raise ConfigError("daemon_scheme", self.daemon_scheme, "must be http or https")
        if not 0 <= self.metrics_port <= 65535 or not 0 < self.daemon_port <= 65535:
            raise ConfigError("metrics_port/daemon_port", (self.metrics_port, self.daemon_port), "must be ports")
        for name in ("daemon_timeout", "retry_base", "retry_cap", "handler_retry_delay", "resync_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, getattr(self, name), "must be > 0")
        if not 0 <= self.node_list_max_age <= 3600:
            raise ConfigError("node_list_max_age", self.node_list_max_age, "must be in 0..3600 seconds")
        if self.retry_attempts < 1:
            raise ConfigError("retry_attempts", self.retry_attempts, "must be >= 1")

    def token(self) -> str:
        """The daemon token: from the file when set (re-read, so a rotated Secret is picked up)."""
        if self.daemon_token_file is None:
            return self.daemon_token
        try:
            return self.daemon_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("daemon_token_file", str(self.daemon_token_file), exc.strerror or "unreadable") from exc
