"""Prometheus metrics of the operator, on their own registry, and the small HTTP server that exposes them.

Claims per phase is a gauge recomputed from the last phase the operator wrote for each claim it manages, so
that it stays right across deletions; reconcile latency is a histogram per trigger; daemon errors count per
node and kind (unreachable, refused).
"""

from __future__ import annotations

import collections

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flexnpu.claims import ClaimPhase


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.claims = Gauge(
            "flexnpu_operator_claims", "VNpuClaims managed, by phase", ["phase"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "flexnpu_operator_reconcile_seconds",
            "time to reconcile one claim with its daemon",
            ["trigger"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.daemon_errors = Counter(
            "flexnpu_operator_daemon_errors", "failed calls to node daemons", ["node", "kind"], registry=self.registry
        )
        self._phases: dict[str, ClaimPhase] = {}
        for phase in ClaimPhase:
            self.claims.labels(phase=phase.value).set(0)

    def set_phase(self, claim: str, phase: ClaimPhase) -> None:
        self._phases[claim] = phase
        self._refresh()

    def forget(self, claim: str) -> None:
        self._phases.pop(claim, None)
        self._refresh()

    def _refresh(self) -> None:
        counts = collections.Counter(self._phases.values())
        for phase in ClaimPhase:
            self.claims.labels(phase=phase.value).set(counts.get(phase, 0))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class MetricsServer:
    """``GET /metrics`` on host:port, started and stopped with the operator."""

    def __init__(self, metrics: OperatorMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
