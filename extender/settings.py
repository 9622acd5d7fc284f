"""The extender's one settings object, built once at start (flags > FLEXNPU_EXTENDER_* env > file) and logged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flexnpu.errors import ConfigError, ValidationError
from flexnpu.extender.core.admission import AdmissionPolicy
from flexnpu.extender.core.placement import DEFAULT_POLICY, policy
from flexnpu.extender.forward import peer_url, url_for
from flexnpu.settings import setting
from flexnpu.units import UnitsConfig

ENV_PREFIX = "FLEXNPU_EXTENDER_"
MIB = 1024 * 1024


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("listen", value, "must be HOST:PORT, e.g. 0.0.0.0:8888")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclasses.dataclass(frozen=True)
class ExtenderSettings:
    """Where the extender listens, how it places pods, and how it reaches the API server and elects a leader."""

    listen: str = setting("0.0.0.0:8888", "HOST:PORT of the extender's HTTP server (verbs, /metrics, /healthz)")
    policy: str = setting(DEFAULT_POLICY, "placement policy: binpack, spread, bestfit, fgd or default")
    kubeconfig: Path | None = setting(
        None, "kubeconfig file; empty: KUBECONFIG, else ~/.kube/config, else the in-cluster service account"
    )
    context: str = setting("", "kubeconfig context; empty: the kubeconfig's current-context")
    api_server: str = setting("", "Kubernetes API URL without auth (tests, benchmarks); overrides kubeconfig")
    node_cache_capable: bool = setting(
        True,
        "kube-scheduler's nodeCacheCapable: true sends node names only; "
        "false sends full nodes, whose inventories then refresh the cache",
    )
    best_nodes_only: bool = setting(
        True,
        "filter passes only the fitting nodes whose placement is cheapest (those prioritize scores 10); "
        "kube-scheduler's own scores break ties among them; false: every fitting node passes",
    )
    lease_name: str = setting("flexnpu-extender", "name of the coordination.k8s.io/v1 Lease the replicas share")
    namespace: str = setting("", "namespace of the Lease; empty: the kubeconfig's or service account's")
    identity: str = setting("", "this replica's name in the Lease; empty: hostname and process id")
    leader_elect: bool = setting(True, "elect a leader among replicas (only the leader binds)")
    lease_duration: float = setting(15.0, "seconds a Lease stays valid without renewal")
    renew_deadline: float = setting(10.0, "seconds a leader keeps binding without a successful renewal")
    retry_period: float = setting(2.0, "seconds between Lease renewals and acquisition attempts")
    bind_wait: float = setting(
        3.0,
        "seconds a bind waits for the node's kubelet to finish allocating an earlier pod of the same first "
        "container size (Allocate names no pod; kept below the scheduler's extender httpTimeout, 5 s in the chart)",
    )
    allocation_timeout: float = setting(
        30.0, "seconds after its bind that a pod no kubelet has allocated stops holding back the next bind"
    )
    max_body_bytes: int = setting(64 * MIB, "largest request body accepted (a NodeList of 5,000 nodes is ~50 MB)")
    units_per_card: int = setting(10, "U: units per card, as the device plugin advertises (1..1000)")
    webhook_listen: str = setting("", "HOST:PORT of the admission webhook's HTTPS server; empty: no webhook")
    webhook_cert_file: Path | None = setting(
        None, "PEM serving certificate of the webhook (needed with webhook_listen)"
    )
    webhook_key_file: Path | None = setting(None, "PEM private key of the webhook's certificate")
    webhook_max_body_bytes: int = setting(8 * MIB, "largest AdmissionReview accepted (a pod and its old object)")
    scheduler_name: str = setting(
        "flexnpu-scheduler", "the webhook sets spec.schedulerName to this for vnpu pods naming no other scheduler"
    )
    high_priority_namespaces: tuple[str, ...] = setting((), "namespaces whose pods may say flexnpu.io/priority: high")
    high_priority_classes: tuple[str, ...] = setting(
        (), "PriorityClass names whose pods may say flexnpu.io/priority: high"
    )
    high_priority_min_value: int = setting(
        1_000_000, "pods whose PriorityClass value (spec.priority) is at least this may say flexnpu.io/priority: high"
    )
    advertise_url: str = setting(
        "",
        "http(s)://HOST:PORT where the other replicas reach this one (published in the Lease while it leads, "
        "for the binds they forward); empty: built from advertise_host and the listen port",
    )
    advertise_host: str = setting(
        "", "this replica's address (the chart passes the pod IP); empty with no advertise_url: binds not forwarded"
    )
    forward_timeout: float = setting(
        4.5,
        "seconds a standby waits for the leader's answer to a forwarded bind "
        "(keep it below the scheduler's extender httpTimeout, 5 s in the chart)",
    )

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        policy(self.policy)
        UnitsConfig(units_per_card=self.units_per_card)
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes", self.max_body_bytes, "must be at least 1024")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ConfigError(
                "retry_period/renew_deadline/lease_duration",
                (self.retry_period, self.renew_deadline, self.lease_duration),
                "must satisfy 0 < retry_period < renew_deadline < lease_duration",
            )
        if not 0 <= self.bind_wait <= 60:
            raise ConfigError("bind_wait", self.bind_wait, "must be 0..60 seconds (0: binds never wait)")
        if not 0 < self.allocation_timeout <= 3600:
            raise ConfigError("allocation_timeout", self.allocation_timeout, "must be in (0, 3600] seconds")
        if not self.lease_name:
            raise ConfigError("lease_name", self.lease_name, "must not be empty")
        self._check_webhook()
        self._check_forwarding()

    def _check_webhook(self) -> None:
        if not self.scheduler_name:
            raise ConfigError("scheduler_name", self.scheduler_name, "must not be empty")
        if self.webhook_max_body_bytes < 1024:
            raise ConfigError("webhook_max_body_bytes", self.webhook_max_body_bytes, "must be at least 1024")
        if not self.webhook_listen:
            return
        parse_listen(self.webhook_listen)
        for name in ("webhook_cert_file", "webhook_key_file"):
            if getattr(self, name) is None:
                raise ConfigError(name, None, "must be set when webhook_listen is (the webhook serves HTTPS only)")

    def _check_forwarding(self) -> None:
        try:
            if self.advertise_url:
                peer_url(self.advertise_url, "advertise_url")
            if self.advertise_host:
                peer_url(url_for(self.advertise_host, parse_listen(self.listen)[1]), "advertise_host")
        except ValidationError as exc:
            raise ConfigError(exc.field, exc.value, exc.reason) from exc
        if not 0 < self.forward_timeout <= 60:
            raise ConfigError("forward_timeout", self.forward_timeout, "must be in (0, 60] seconds")

    @property
    def units(self) -> UnitsConfig:
        return UnitsConfig(units_per_card=self.units_per_card)

    @property
    def admission(self) -> AdmissionPolicy:
        """What the admission webhook enforces (flexnpu.extender.core.admission)."""
        return AdmissionPolicy(
            scheduler_name=self.scheduler_name,
            units=self.units,
            high_namespaces=frozenset(self.high_priority_namespaces),
            high_priority_classes=frozenset(self.high_priority_classes),
            high_min_priority=self.high_priority_min_value,
        )
