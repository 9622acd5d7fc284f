"""Prometheus metrics of flexnpud, read from the daemon's state at scrape time (nothing to keep in sync).

Per card: units (aicore) and memory registered and their capacity, tenant count. Per registration: target and
achieved share, device time, grants and grant-wait p99 from the grant server; device memory used (the memory
watch), its cap, and whether it is past the cap. A private CollectorRegistry per
daemon, so that tests and several daemons in one process never share globals. The writes of the registrations
file are the one thing counted as they happen (``WriteMetrics``: the HTTP API's group commit observes them).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flexnpu.shim.daemon.service import DaemonService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CARD = ["card", "npu", "chip", "model"]
_TENANT = ["flexnpu_id", "entity", "npu", "chip", "priority"]


class DaemonCollector(Collector):
    """Turns a DaemonService snapshot into metric families."""

    def __init__(self, service: DaemonService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        yield from self._card_metrics()
        yield from self._tenant_metrics()

    def _card_metrics(self) -> Iterator[Metric]:
        families = {
            "units": GaugeMetricFamily("flexnpu_card_units_used", "aicore units registered on the card", labels=_CARD),
            "capacity": GaugeMetricFamily("flexnpu_card_units_capacity", "quota times oversubscription", labels=_CARD),
            "memory": GaugeMetricFamily("flexnpu_card_memory_used_mib", "device memory registered, MiB", labels=_CARD),
            "hbm": GaugeMetricFamily("flexnpu_card_memory_total_mib", "device memory of the card, MiB", labels=_CARD),
            "tenants": GaugeMetricFamily("flexnpu_card_registrations", "registrations on the card", labels=_CARD),
        }
        for card in self._service.card_views():
            labels = _labels(card["uuid"], card["index"], card["chip"], card["model"])
            families["units"].add_metric(labels, card["aicore_used"])
            families["capacity"].add_metric(labels, card["aicore_capacity"])
            families["memory"].add_metric(labels, card["memory_used_mib"])
            families["hbm"].add_metric(labels, card["hbm_mib"])
            families["tenants"].add_metric(labels, card["tenants"])
        yield from families.values()

    def _tenant_metrics(self) -> Iterator[Metric]:
        views = self._service.registration_views()
        total = GaugeMetricFamily("flexnpu_registrations", "registrations on this node")
        total.add_metric([], len(views))
        yield total
        target = GaugeMetricFamily("flexnpu_tenant_target_share", "aicore_alloc / quota", labels=_TENANT)
        achieved = GaugeMetricFamily("flexnpu_tenant_achieved_share", "share of device time achieved", labels=_TENANT)
        wait = GaugeMetricFamily("flexnpu_tenant_grant_wait_p99_seconds", "p99 wait for a grant", labels=_TENANT)
        device = CounterMetricFamily("flexnpu_tenant_device_time_seconds", "device time used", labels=_TENANT)
        grants = CounterMetricFamily("flexnpu_tenant_grants", "grants served", labels=_TENANT)
        memory = GaugeMetricFamily(
            "flexnpu_memory_used_bytes",
            "device memory the registration's pod uses on its card (absent while unknown)",
            labels=_TENANT,
        )
        cap = GaugeMetricFamily("flexnpu_memory_cap_bytes", "the registration's device memory cap", labels=_TENANT)
        over = GaugeMetricFamily(
            "flexnpu_memory_over_cap", "1 while the pod's device memory is past its cap", labels=_TENANT
        )
        for view in views:
            labels = _labels(
                view["flexnpu_id"], view["entity"], view["npu"], view["chip"], view.get("priority", "normal")
            )
            target.add_metric(labels, view["target_share"])
            achieved.add_metric(labels, view["achieved_share"])
            wait.add_metric(labels, view["wait_p99_us"] / 1e6)
            device.add_metric(labels, view["device_time_us"] / 1e6)
            grants.add_metric(labels, view["grants"])
            used = view.get("memory_used_bytes")
            if used is not None:
                memory.add_metric(labels, used)
            cap.add_metric(labels, view.get("memory_cap_bytes", view["memory_alloc"] << 20))
            over.add_metric(labels, 1 if view.get("memory_over_cap") else 0)
        yield from (target, achieved, wait, device, grants, memory, cap, over)


def _labels(*values: object) -> list[str]:
    """Label values that the exposition format can always encode.

    The API refuses strings that are not UTF-8, but a scrape must never fail because one value slipped through
    (an older state file, a future field): a lone surrogate becomes its ``\\udXXX`` escape instead of a 500.
    """
    return [str(v).encode("utf-8", "backslashreplace").decode("utf-8") for v in values]


def metrics_registry(service: DaemonService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(service))
    return registry


class WriteMetrics:
    """Each write of the registrations file (with the grant server's update after it) and the changes it held."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "flexnpu_daemon_write_seconds",
            "one write of the registrations file (fsync of the file and of its directory) and the grant update",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.changes = Histogram(
            "flexnpu_daemon_write_changes",
            "changes (registers, unregisters) one write held: more than one when they came during a write",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.failures = Counter(
            "flexnpu_daemon_write_failures", "writes that failed (their changes were refused)", registry=registry
        )


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of every metric in ``registry``."""
    return generate_latest(registry)
