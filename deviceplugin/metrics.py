"""Prometheus metrics of the device plugin, on a registry of its own (never the process-global one)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from flexnpu.cards import Card, Health


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cards = Gauge(
            "flexnpu_deviceplugin_cards", "cards on this node by health", ["health"], registry=self.registry
        )
        self.units_total = Gauge("flexnpu_deviceplugin_units", "units advertised to kubelet", registry=self.registry)
        self.units_used = Gauge(
            "flexnpu_deviceplugin_units_used",
            "units held by allocated pods, per card",
            ["card"],
            registry=self.registry,
        )
        self.units_free = Gauge(
            "flexnpu_deviceplugin_units_free", "advertised units not held by allocated pods", registry=self.registry
        )
        self.allocations = Counter(
            "flexnpu_deviceplugin_allocations",
            "Allocate calls answered, by placement",
            ["placement"],
            registry=self.registry,
        )
        self.failures = Counter(
            "flexnpu_deviceplugin_allocation_failures", "Allocate calls refused", registry=self.registry
        )
        self.registrations = Counter(
            "flexnpu_deviceplugin_registrations", "registrations with kubelet", registry=self.registry
        )
        self.allocate_seconds = Histogram(
            "flexnpu_deviceplugin_allocate_seconds",
            "Allocate latency",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )
        self.claim_reads = Counter(
            "flexnpu_deviceplugin_claim_reads",
            "reads of a pod's VNpuClaims by Allocate, by source (cache: the watch; api: a list call)",
            ["source"],
            registry=self.registry,
        )
        self.slots = Counter(
            "flexnpu_deviceplugin_slots",
            "a registration's slot as an Allocate found it: ready (flexnpud had it), registered (this plugin "
            "registered the claim with flexnpud), awaited (made meanwhile, by the operator), refused (flexnpud "
            "refused the claim), missing (not there in time: the container runs ungated)",
            ["outcome"],
            registry=self.registry,
        )
        self.handshake_pending = Gauge(
            "flexnpu_deviceplugin_handshake_pending",
            "pods with handshake writes not yet on the API",
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe_cards(self, cards: Sequence[Card], advertised_per_card: int) -> None:
        for health in Health:
            self.cards.labels(health=health.value).set(sum(1 for c in cards if c.health is health))
        self.units_total.set(advertised_per_card * sum(1 for c in cards if c.healthy))

    def observe_usage(self, used: Mapping[str, int], cards: Sequence[Card], advertised_per_card: int) -> None:
        for card in cards:
            self.units_used.labels(card=card.uuid).set(used.get(card.uuid, 0))
        total = advertised_per_card * sum(1 for c in cards if c.healthy)
        self.units_free.set(max(0, total - sum(used.values())))

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics in a background thread (port 0: no endpoint)."""
        if port:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
