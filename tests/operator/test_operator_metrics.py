"""The operator's metrics: claims per phase follow set_phase/forget, and the HTTP server serves them."""

from __future__ import annotations

import aiohttp

from flexnpu.claims import ClaimPhase
from flexnpu.operator.metrics import MetricsServer, OperatorMetrics
from flexnpu_testsupport.waiting import free_port


def phase_counts(text: str) -> dict[str, float]:
    prefix = 'flexnpu_operator_claims{phase="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_claims_per_phase_follow_the_last_phase_written_and_deletions() -> None:
    metrics = OperatorMetrics()
    assert set(phase_counts(metrics.render().decode()).values()) == {0.0}
    metrics.set_phase("ns/a", ClaimPhase.PENDING)
    metrics.set_phase("ns/b", ClaimPhase.PENDING)
    metrics.set_phase("ns/a", ClaimPhase.REGISTERED)
    counts = phase_counts(metrics.render().decode())
    assert (counts[ClaimPhase.PENDING.value], counts[ClaimPhase.REGISTERED.value]) == (1.0, 1.0)
    metrics.forget("ns/b")
    metrics.forget("ns/never-seen")
    counts = phase_counts(metrics.render().decode())
    assert (counts[ClaimPhase.PENDING.value], counts[ClaimPhase.REGISTERED.value]) == (0.0, 1.0)


async def test_the_server_serves_the_metrics_until_stopped() -> None:
    metrics = OperatorMetrics()
    metrics.set_phase("ns/a", ClaimPhase.REGISTERED)
    port = free_port()
    server = MetricsServer(metrics, "127.0.0.1", port)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
            assert phase_counts(await reply.text())[ClaimPhase.REGISTERED.value] == 1.0
    finally:
        await server.stop()
    await server.stop()  # a second stop is a no-op
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"http://127.0.0.1:{port}/metrics"):
                raise AssertionError("the metrics server still answers after stop")
        except aiohttp.ClientConnectionError:
            pass
