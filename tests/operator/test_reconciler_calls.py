"""What the Reconciler asks a node daemon, call by call (a recording client; flexnpud's answers are modelled on
its API: register says created/updated/unchanged, another daemon may refuse a re-used id with 409)."""

from __future__ import annotations

import asyncio
from typing import Any

from flexnpu.claims import ClaimPhase
from flexnpu.operator.core.claims import ClaimRef, derive_flexnpu_id
from flexnpu.operator.core.daemons import DaemonEndpoint
from flexnpu.operator.daemon_client import DaemonClient, DaemonRefused
from flexnpu.operator.metrics import OperatorMetrics
from flexnpu.operator.reconciler import NodeLists, Reconciler
from flexnpu.operator.settings import OperatorSettings
from flexnpu.registration import Registration

REF = ClaimRef(namespace="default", name="serve", uid="0123456789abcdef")
FLEXNPU_ID = derive_flexnpu_id(REF)
SPEC: dict[str, Any] = {
    "nodeName": "node-a",
    "npu": 1,
    "chip": 0,
    "aicoreAlloc": 3,
    "memoryMiB": 4096,
    "priority": "normal",
    "entity": "serve",
}
ENDPOINT = DaemonEndpoint(node="node-a", url="http://node-a")


class RecordingDaemon(DaemonClient):
    """A daemon's registrations in a dict, every call recorded; ``refuses_reused_ids`` answers a register of a
    held id with another body as a daemon that cannot update in place would."""

    def __init__(self, held: dict[str, Registration] | None = None, *, refuses_reused_ids: bool = False) -> None:
        self.held = dict(held or {})
        self.refuses_reused_ids = refuses_reused_ids
        self.calls: list[str] = []

    async def register(self, base: str, registration: Registration) -> str:
        self.calls.append("register")
        old = self.held.get(registration.flexnpu_id)
        if old == registration:
            return "unchanged"
        if old is not None and self.refuses_reused_ids:
            raise DaemonRefused(base, 409, f"flexnpu_id {registration.flexnpu_id!r} is registered with another body")
        self.held[registration.flexnpu_id] = registration
        return "created" if old is None else "updated"

    async def unregister(self, base: str, flexnpu_id: str) -> bool:
        self.calls.append("unregister")
        return self.held.pop(flexnpu_id, None) is not None

    async def registrations(self, base: str) -> dict[str, Registration]:
        self.calls.append("registrations")
        return dict(self.held)


def reconciler(daemon: RecordingDaemon) -> Reconciler:
    return Reconciler(OperatorSettings(metrics_port=0), daemon, OperatorMetrics())


def desired(aicore: int = 3, flexnpu_id: str = FLEXNPU_ID) -> Registration:
    return Registration(flexnpu_id=flexnpu_id, entity="serve", npu=1, aicore_alloc=aicore, memory_alloc=4096)


async def test_a_claims_event_asks_the_daemon_one_thing_and_never_lists_the_node() -> None:
    """Listing a node's registrations for each claim made a burst of claims on one node quadratic."""
    others = [f"vnc.default.other-{i}.00000000" for i in range(3)]
    daemon = RecordingDaemon({other: desired(flexnpu_id=other) for other in others})
    result = await reconciler(daemon).apply(REF, SPEC, "", lambda node: ENDPOINT)
    assert result.outcome.phase == ClaimPhase.REGISTERED and not result.retry
    assert daemon.calls == ["register"]
    assert daemon.held[FLEXNPU_ID] == desired()

    changed = {**SPEC, "aicoreAlloc": 5}
    result = await reconciler(daemon).apply(REF, changed, FLEXNPU_ID, lambda node: ENDPOINT)
    assert result.outcome.phase == ClaimPhase.REGISTERED
    assert daemon.calls == ["register", "register"]
    assert daemon.held[FLEXNPU_ID] == desired(aicore=5)


async def test_a_daemon_that_refuses_a_reused_id_gets_the_change_as_deregister_and_register() -> None:
    daemon = RecordingDaemon({FLEXNPU_ID: desired()}, refuses_reused_ids=True)
    result = await reconciler(daemon).apply(REF, {**SPEC, "aicoreAlloc": 5}, FLEXNPU_ID, lambda node: ENDPOINT)
    assert result.outcome.phase == ClaimPhase.REGISTERED
    assert daemon.calls == ["register", "registrations", "unregister", "register"]
    assert daemon.held == {FLEXNPU_ID: desired(aicore=5)}


async def test_a_reused_id_refused_for_an_id_the_daemon_does_not_hold_is_the_daemons_refusal() -> None:
    class Refusing(RecordingDaemon):
        async def register(self, base: str, registration: Registration) -> str:
            self.calls.append("register")
            raise DaemonRefused(base, 409, f"flexnpu_id {registration.flexnpu_id!r} is registered with another body")

    daemon = Refusing()
    result = await reconciler(daemon).apply(REF, SPEC, "", lambda node: ENDPOINT)
    assert result.outcome.phase == ClaimPhase.FAILED
    assert "registered with another body" in result.outcome.message
    assert daemon.calls == ["register", "registrations"]


async def test_the_resync_lists_the_node_to_collect_orphans() -> None:
    orphan = "vnc.default.gone.00000000"
    daemon = RecordingDaemon({FLEXNPU_ID: desired(), orphan: desired(flexnpu_id=orphan)})
    result = await reconciler(daemon).apply(REF, SPEC, FLEXNPU_ID, lambda node: ENDPOINT, known_ids=[FLEXNPU_ID])
    assert result.outcome.phase == ClaimPhase.REGISTERED
    assert daemon.calls == ["registrations", "unregister"]
    assert daemon.held == {FLEXNPU_ID: desired()}


OTHER = ClaimRef(namespace="default", name="train", uid="fedcba9876543210")
OTHER_SPEC: dict[str, Any] = {**SPEC, "npu": 2, "entity": "train"}


async def test_the_resyncs_of_a_nodes_claims_share_one_list_of_its_registrations() -> None:
    """One list per node for its claims' re-checks, not one per claim: 100 claims on a node made each resync
    interval 100 lists of 100 registrations."""
    daemon = RecordingDaemon()
    rec = reconciler(daemon)
    known = [FLEXNPU_ID, derive_flexnpu_id(OTHER)]
    await rec.apply(REF, SPEC, "", lambda node: ENDPOINT)
    for ref, spec in ((REF, SPEC), (OTHER, OTHER_SPEC), (REF, SPEC)):
        result = await rec.apply(ref, spec, "", lambda node: ENDPOINT, known_ids=known)
        assert result.outcome.phase == ClaimPhase.REGISTERED
    # the handler's register, one list, the other claim registered by its re-check; the first claim's own
    # register was put into the lent list, so no re-check registered it again
    assert daemon.calls == ["register", "registrations", "register"]
    assert set(daemon.held) == set(known)


async def test_concurrent_resyncs_of_a_node_wait_for_the_one_list() -> None:
    release = asyncio.Event()

    class Slow(RecordingDaemon):
        async def registrations(self, base: str) -> dict[str, Registration]:
            await release.wait()
            return await super().registrations(base)

    daemon = Slow({FLEXNPU_ID: desired()})
    rec = reconciler(daemon)
    checks = [
        asyncio.create_task(rec.apply(REF, SPEC, FLEXNPU_ID, lambda node: ENDPOINT, known_ids=[FLEXNPU_ID]))
        for _ in range(5)
    ]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*checks)
    assert all(r.outcome.phase == ClaimPhase.REGISTERED for r in results)
    assert daemon.calls == ["registrations"]


def test_a_lent_list_is_taken_again_once_it_is_max_age_old_and_with_max_age_0_every_time() -> None:
    now = [0.0]
    daemon = RecordingDaemon({FLEXNPU_ID: desired()})

    async def fetch() -> dict[str, Registration]:
        return await daemon.registrations(ENDPOINT.url)

    async def scenario() -> None:
        lists = NodeLists(5.0, clock=lambda: now[0])
        await lists.held(ENDPOINT.url, fetch)
        now[0] = 5.0
        await lists.held(ENDPOINT.url, fetch)
        assert daemon.calls == ["registrations"]
        now[0] = 5.1
        assert FLEXNPU_ID in await lists.held(ENDPOINT.url, fetch)
        assert daemon.calls == ["registrations"] * 2
        lists.unregistered(ENDPOINT.url, FLEXNPU_ID)  # what the operator deregisters leaves the lent list
        assert FLEXNPU_ID not in await lists.held(ENDPOINT.url, fetch)
        lists.forget(ENDPOINT.url)
        await lists.held(ENDPOINT.url, fetch)
        assert daemon.calls == ["registrations"] * 3

        never = NodeLists(0.0, clock=lambda: now[0])
        await never.held(ENDPOINT.url, fetch)
        await never.held(ENDPOINT.url, fetch)
        assert daemon.calls == ["registrations"] * 5

    asyncio.run(scenario())


async def test_a_daemon_that_lost_its_registrations_is_repaired_once_the_lent_list_is_taken_again() -> None:
    daemon = RecordingDaemon()
    settings = OperatorSettings(metrics_port=0, node_list_max_age=0.05, resync_interval=30)
    rec = Reconciler(settings, daemon, OperatorMetrics())
    await rec.apply(REF, SPEC, FLEXNPU_ID, lambda node: ENDPOINT, known_ids=[FLEXNPU_ID])
    daemon.held.clear()  # flexnpud restarted from an empty state directory
    await asyncio.sleep(0.06)
    await rec.apply(REF, SPEC, FLEXNPU_ID, lambda node: ENDPOINT, known_ids=[FLEXNPU_ID])
    assert daemon.held == {FLEXNPU_ID: desired()}
    assert daemon.calls == ["registrations", "register", "registrations", "register"]


def test_the_lent_list_is_at_most_half_a_resync_interval_old() -> None:
    rec = Reconciler(OperatorSettings(metrics_port=0, resync_interval=2.0), RecordingDaemon(), OperatorMetrics())
    assert rec.node_list_max_age == 1.0
    rec = Reconciler(OperatorSettings(metrics_port=0), RecordingDaemon(), OperatorMetrics())
    assert rec.node_list_max_age == 5.0


async def test_a_change_refused_after_a_deregister_keeps_the_old_body_on_the_daemon_and_in_the_lent_list() -> None:
    class Full(RecordingDaemon):
        async def register(self, base: str, registration: Registration) -> str:
            if registration.aicore_alloc > 4 and registration.flexnpu_id not in self.held:
                self.calls.append("register")
                raise DaemonRefused(base, 409, "aicore_alloc 5 does not fit on npu 1 chip 0")
            return await super().register(base, registration)

    daemon = Full({FLEXNPU_ID: desired()}, refuses_reused_ids=True)
    rec = reconciler(daemon)
    bigger = {**SPEC, "aicoreAlloc": 5}
    for _ in range(2):  # the second re-check takes the lent list: it must still hold the restored body
        result = await rec.apply(REF, bigger, FLEXNPU_ID, lambda node: ENDPOINT, known_ids=[FLEXNPU_ID])
        assert result.outcome.phase == ClaimPhase.FAILED
        assert "does not fit" in result.outcome.message and "previous registration" in result.outcome.message
        assert daemon.held == {FLEXNPU_ID: desired()}
