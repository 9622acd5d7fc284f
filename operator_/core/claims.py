"""What a VNpuClaim means to its node daemon: the registration id and body the claim asks for.

The id is derived once from the claim's identity and then kept in ``status.flexnpuId``, so that a claim
always finds its own registration again (after an operator restart, or if the derivation ever changes).
"""

from __future__ import annotations

from dataclasses import dataclass

from flexnpu.claims import MAX_REGISTRATION_ID, REGISTRATION_ID_PREFIX, registration_id

ID_PREFIX = REGISTRATION_ID_PREFIX
"""Every registration the operator makes starts with this, so that it can tell its own orphans from
registrations that a person or another tool made with register.sh."""

MAX_ID_LENGTH = MAX_REGISTRATION_ID


@dataclass(frozen=True)
class ClaimRef:
    """Who a claim is: enough to derive its registration id and to name it in messages."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def derive_flexnpu_id(ref: ClaimRef) -> str:
    """``vnc.<namespace>.<name>.<uid[:8]>`` (flexnpu.claims.registration_id, shared with the device plugin)."""
    return registration_id(ref.namespace, ref.name, ref.uid)


def claim_flexnpu_id(ref: ClaimRef, recorded: str) -> str:
    """The id a claim registers under: the one already in its status, else a derived one."""
    return recorded or derive_flexnpu_id(ref)
