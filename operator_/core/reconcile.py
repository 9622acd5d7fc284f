"""The operator's decisions: what to do given a claim and its daemon's registrations, and what status says.

Everything here is a pure function over typed values (no clock, no client): the kopf handlers gather the
facts (the claim, the daemon's flexnpu-info, whether the pod and the daemon exist), ask these functions what
to do, do it, and write the resulting status. Table tests in tests/operator/test_core_*.py drive them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flexnpu.claims import ClaimPhase, ClaimStatusPayload, ConditionPayload
from flexnpu.registration import Registration

CONDITION_REGISTERED = "Registered"
CONDITION_DAEMON = "DaemonReachable"


class Action(enum.StrEnum):
    """One step towards the desired state of one claim on its daemon."""

    NOTHING = "nothing"  # the daemon holds exactly the desired registration (or nothing to release)
    REGISTER = "register"  # the daemon lacks it: a new claim, or a daemon that restarted empty
    REPLACE = "replace"  # the daemon holds another body under the id: the spec changed, or drift
    UNREGISTER = "unregister"  # the claim is going away (deleted, or its pod is gone)


def plan(desired: Registration | None, actual: Registration | None) -> Action:
    """Desired-vs-actual diff for one id; ``desired`` None means release whatever is there."""
    if desired is None:
        return Action.NOTHING if actual is None else Action.UNREGISTER
    if actual is None:
        return Action.REGISTER
    return Action.NOTHING if actual == desired else Action.REPLACE


def orphans(actual_ids: Iterable[str], known_ids: Iterable[str], prefix: str) -> list[str]:
    """Registrations the operator made (``prefix``) that no existing claim owns any more, sorted.

    They appear when a claim was deleted while its node's daemon was unreachable: deletion is never held up
    by a lost node, so the registration is collected when the daemon answers again.
    """
    known = set(known_ids)
    return sorted(i for i in actual_ids if i.startswith(prefix) and i not in known)


class Reason(enum.StrEnum):
    """Machine-readable reasons, used in conditions and Events (CamelCase, as Kubernetes does)."""

    REGISTERED = "Registered"
    INVALID_SPEC = "InvalidSpec"
    NO_DAEMON = "NoDaemon"
    DAEMON_UNREACHABLE = "DaemonUnreachable"
    QUOTA_EXCEEDED = "QuotaExceeded"
    MEMORY_EXCEEDED = "MemoryExceeded"
    ID_CONFLICT = "IdConflict"
    INVALID_REQUEST = "InvalidRequest"
    UNAUTHORIZED = "Unauthorized"
    POD_GONE = "PodGone"
    RELEASING = "Releasing"


def refusal_reason(http_status: int, error: str) -> Reason:
    """Why the daemon refused a registration, from its HTTP status and its ``error`` text."""
    if http_status in (401, 403):
        return Reason.UNAUTHORIZED
    if http_status == 409:
        text = error.lower()
        if "memory" in text or "hbm" in text:
            return Reason.MEMORY_EXCEEDED
        if "quota" in text or "aicore" in text:
            return Reason.QUOTA_EXCEEDED
        return Reason.ID_CONFLICT
    return Reason.INVALID_REQUEST


def is_transient(http_status: int) -> bool:
    """Worth retrying as is: the daemon is busy or broken, not saying no to this claim."""
    return http_status in (408, 425, 429) or http_status >= 500


@dataclass(frozen=True)
class Outcome:
    """What one reconciliation achieved: the claim's next phase, why, and in words."""

    phase: ClaimPhase
    reason: Reason
    message: str
    flexnpu_id: str = ""
    daemon_reachable: bool | None = None

    @property
    def is_warning(self) -> bool:
        return self.phase == ClaimPhase.FAILED or self.reason in (Reason.NO_DAEMON, Reason.DAEMON_UNREACHABLE)


def build_status(
    outcome: Outcome, previous: Sequence[Mapping[str, object]], *, now: str, generation: int
) -> ClaimStatusPayload:
    """The claim's whole status for ``outcome``; a condition keeps its lastTransitionTime while it holds."""
    registered = outcome.phase == ClaimPhase.REGISTERED
    conditions = [_condition(CONDITION_REGISTERED, registered, outcome.reason, outcome.message, previous, now)]
    if outcome.daemon_reachable is not None:
        reason = Reason.REGISTERED if outcome.daemon_reachable else outcome.reason
        message = "" if outcome.daemon_reachable else outcome.message
        conditions.append(_condition(CONDITION_DAEMON, outcome.daemon_reachable, reason, message, previous, now))
    status: ClaimStatusPayload = {
        "phase": outcome.phase.value,
        "message": outcome.message,
        "conditions": conditions,
        "observedGeneration": generation,
        "lastSyncTime": now,
    }
    if outcome.flexnpu_id:
        status["flexnpuId"] = outcome.flexnpu_id
    return status


def _condition(
    kind: str, holds: bool, reason: Reason, message: str, previous: Sequence[Mapping[str, object]], now: str
) -> ConditionPayload:
    state = "True" if holds else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = now
    if before is not None and before.get("status") == state and isinstance(before.get("lastTransitionTime"), str):
        since = str(before["lastTransitionTime"])
    return {"type": kind, "status": state, "reason": reason.value, "message": message, "lastTransitionTime": since}


def status_changed(old: Mapping[str, object], new: ClaimStatusPayload) -> bool:
    """True when writing ``new`` says something the claim does not say yet (the sync time aside)."""
    fresh: Mapping[str, object] = new
    keys = ("phase", "message", "flexnpuId", "observedGeneration", "conditions")
    return any(old.get(k) != fresh.get(k) for k in keys)


def should_announce(old: Mapping[str, object], outcome: Outcome) -> bool:
    """Post an Event only when the phase or the reason changes, so that a periodic re-check never spams."""
    if old.get("phase") != outcome.phase.value:
        return True
    reasons = [c.get("reason") for c in _conditions(old) if c.get("type") == CONDITION_REGISTERED]
    return reasons != [outcome.reason.value]


def _conditions(status: Mapping[str, object]) -> list[Mapping[str, object]]:
    raw = status.get("conditions")
    return [c for c in raw if isinstance(c, Mapping)] if isinstance(raw, list) else []


def previous_conditions(status: Mapping[str, object]) -> list[Mapping[str, object]]:
    """The conditions of a claim's current status, tolerating anything malformed."""
    return _conditions(status)


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff: ``base * 2**attempt``, at most ``cap`` (attempt counts from 0)."""
    return float(min(cap, base * (2 ** max(0, attempt))))
