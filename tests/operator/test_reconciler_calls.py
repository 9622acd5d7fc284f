"""What the Reconciler asks a node daemon, call by call (a recording client; flexnpud's answers are modelled on
its API: register says created/updated/unchanged, another daemon may refuse a re-used id with 409)."""

from __future__ import annotations

from typing import Any

from flexnpu.claims import ClaimPhase
from flexnpu.operator.core.claims import ClaimRef, derive_flexnpu_id
from flexnpu.operator.core.daemons import DaemonEndpoint
from flexnpu.operator.daemon_client import DaemonClient, DaemonRefused
from flexnpu.operator.metrics import OperatorMetrics
from flexnpu.operator.reconciler import Reconciler
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
