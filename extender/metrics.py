"""Prometheus metrics of the extender, in a registry of its own (one per server, so tests can run several).

Request latency and outcome per verb are observed by the HTTP adapter; the state's size, binds by outcome,
reservation races and leadership are read from the service when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from flexnpu.extender.service import ExtenderService

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _ServiceCollector(Collector):
    def __init__(self, service: ExtenderService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self.service
        nodes = service.state.nodes()
        yield _gauge("flexnpu_extender_nodes", "nodes with a flexnpu inventory", len(nodes))
        yield _gauge("flexnpu_extender_cards", "cards on those nodes", sum(len(n.cards) for n in nodes.values()))
        free = sum(c.units_free for n in nodes.values() for c in n.cards)
        yield _gauge("flexnpu_extender_units_free", "free units over all cards", free)
        yield _gauge("flexnpu_extender_leader", "1 on the replica that binds", int(service.leadership.is_leader))
        binds = CounterMetricFamily("flexnpu_extender_binds", "binds by outcome", labels=["outcome"])
        for outcome, count in sorted(service.counters.binds.items()):
            binds.add_metric([outcome], count)
        yield binds
        yield CounterMetricFamily(
            "flexnpu_extender_reservation_conflicts",
            "binds whose cards were taken between choice and reservation",
            value=service.counters.conflicts,
        )
        yield CounterMetricFamily("flexnpu_extender_events", "Kubernetes Events sent", value=service.counters.events)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ExtenderMetrics:
    def __init__(self, service: ExtenderService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flexnpu_extender_requests",
            "extender requests by verb and HTTP status",
            ["verb", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flexnpu_extender_request_seconds",
            "extender request latency by verb",
            ["verb"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ServiceCollector(service))

    def observe(self, verb: str, status: int, seconds: float) -> None:
        self.requests.labels(verb, str(status)).inc()
        self.latency.labels(verb).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
