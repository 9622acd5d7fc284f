"""Leader election over a Lease: one holder, renewal, expiry, and a clean hand-over."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime, timedelta

import kmock
import pytest

from flexnpu.extender.kube import KubeApi
from flexnpu.extender.leader import Action, ElectionConfig, LeaderElector, LeaseRecord, decide

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lease", "now", "action"),
    [
        (None, T0, Action.CREATE),
        (LeaseRecord("me", 15, T0), T0 + timedelta(seconds=60), Action.RENEW),
        (LeaseRecord("other", 15, T0), T0 + timedelta(seconds=14), Action.WAIT),
        (LeaseRecord("other", 15, T0), T0 + timedelta(seconds=15), Action.ACQUIRE),
        (LeaseRecord("", 15, T0), T0, Action.ACQUIRE),
        (LeaseRecord("other", 15, None), T0, Action.ACQUIRE),
    ],
)
def test_decide(lease: LeaseRecord | None, now: datetime, action: Action) -> None:
    assert decide(lease, "me", now) is action


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def elector(api: KubeApi, identity: str, clock: Clock) -> LeaderElector:
    config = ElectionConfig(
        namespace="kube-system",
        name="flexnpu-extender",
        identity=identity,
        lease_duration_s=15,
        renew_deadline_s=10,
        retry_period_s=0.02,
    )
    return LeaderElector(api, config, clock=clock)


async def test_one_leader_then_takeover_after_expiry(api: KubeApi) -> None:
    clock = Clock()
    a, b = elector(api, "replica-a", clock), elector(api, "replica-b", clock)
    await a.step()
    await b.step()
    assert (a.is_leader, b.is_leader) == (True, False)
    assert b.leader == "replica-a"

    clock.now += timedelta(seconds=10)
    await a.step()  # renews
    clock.now += timedelta(seconds=10)
    await b.step()
    assert not b.is_leader  # renewed 10 s ago: still valid

    clock.now += timedelta(seconds=16)  # replica-a stopped renewing (crashed)
    await b.step()
    assert b.is_leader and b.leader == "replica-b"
    await a.step()
    assert not a.is_leader and a.leader == "replica-b"


async def test_a_stopping_leader_hands_over_at_once(api: KubeApi) -> None:
    clock = Clock()
    a, b = elector(api, "replica-a", clock), elector(api, "replica-b", clock)
    task = asyncio.create_task(a.run())
    async with asyncio.timeout(10):
        while not a.is_leader:
            await asyncio.sleep(0.01)
    await b.step()
    assert not b.is_leader

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await b.step()  # no time has passed: the Lease was released, not expired

    assert not a.is_leader
    assert b.is_leader


async def test_a_leader_that_cannot_renew_stops_binding(api: KubeApi, kube: kmock.KubernetesEmulator) -> None:
    clock = Clock()
    a = elector(api, "replica-a", clock)
    await a.step()
    assert a.is_leader
    kube["get", re.compile(r".*/leases/.*")].override << kmock.KubernetesError(status=503, reason="Unavailable")
    clock.now += timedelta(seconds=5)
    await a.step()
    assert a.is_leader  # within the renew deadline
    clock.now += timedelta(seconds=6)
    await a.step()
    assert not a.is_leader
