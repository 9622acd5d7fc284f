"""What a runtime may say on the grant socket, parsed from hostile JSON into typed events (pure).

Every field comes from a pod, so nothing is trusted: a number that is not finite, negative, huge or of the wrong
type is clamped or treated as absent, never passed on for ``int()`` to raise deep inside the server. Absent usage
costs the sender nothing it could gain: the scheduler charges a holder at least the time it held the grant
(``flexnpu.shim.core.slicing.charge_us``). Only what cannot be understood at all (not an object, an unknown
operation, a first message that is not a hello, an identity that is not a short string) is refused, and the
server then closes that connection, which returns any grant it held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flexnpu.shim.runtime import wire

# The most device time one report may claim (an hour): a larger number is clamped to it before charging.
MAX_REPORT_US = 3_600_000_000
# Grant sequence numbers are positive and below 2**63; anything else matches no grant.
MAX_SEQ = (1 << 63) - 1
MAX_OPS = 1 << 31
# A registration id, or a pod's namespace/name, fits in this many characters.
MAX_ID_CHARS = 512


class BadMessage(Exception):
    """A message the server refuses: the wire error code and the reason, sent before it closes the connection."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Hello:
    flexnpu_id: str


@dataclass(frozen=True)
class Want:
    pass


@dataclass(frozen=True)
class Release:
    seq: int | None
    used_us: int
    want: bool
    ops_used: int


@dataclass(frozen=True)
class Extend:
    seq: int | None
    used_us: int


@dataclass(frozen=True)
class Ping:
    pass


Event = Want | Release | Extend | Ping


def parse_hello(message: Mapping[str, object]) -> Hello:
    """The first message of a connection; BadMessage unless it is a hello with a usable id."""
    if message.get("op") != wire.OP_HELLO:
        raise BadMessage(wire.ERR_PROTOCOL, "the first message must be 'hello'")
    flexnpu_id = message.get("id", "")
    if not isinstance(flexnpu_id, str) or len(flexnpu_id) > MAX_ID_CHARS:
        raise BadMessage(wire.ERR_PROTOCOL, f"'id' must be a string of at most {MAX_ID_CHARS} characters")
    if not _encodable(flexnpu_id):
        raise BadMessage(wire.ERR_PROTOCOL, "'id' must be valid Unicode text")
    return Hello(flexnpu_id)


def parse(message: Mapping[str, object]) -> Event:
    """One message after the hello; BadMessage for an unknown operation."""
    op = message.get("op")
    if op == wire.OP_WANT:
        return Want()
    if op == wire.OP_RELEASE:
        return Release(
            seq_of(message.get("seq")),
            usage_us(message.get("used_us")),
            message.get("want") is True,
            _count(message.get("ops_used"), MAX_OPS),
        )
    if op == wire.OP_EXTEND:
        return Extend(seq_of(message.get("seq")), usage_us(message.get("used_us")))
    if op == wire.OP_PING:
        return Ping()
    shown = op if isinstance(op, str) and len(op) <= 40 and _encodable(op) else type(op).__name__
    raise BadMessage(wire.ERR_PROTOCOL, f"unknown op {shown!r}")


def usage_us(value: object) -> int:
    """Reported device time in whole µs: a finite number clamped to [0, MAX_REPORT_US], else 0 (no report)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return int(min(max(value, 0), MAX_REPORT_US))


def seq_of(value: object) -> int | None:
    """A grant sequence number, or None (matches no grant) for anything that is not an integer in range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SEQ:
        return None
    return value


def _count(value: object, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), high)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") decodes from JSON but is not text
        return False
    return True
