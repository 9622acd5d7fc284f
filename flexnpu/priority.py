"""Workload priorities: ``high`` (latency-critical), ``normal`` (default) and ``low``."""

from __future__ import annotations

import enum

from flexnpu.errors import ValidationError


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Larger is served first."""
        return _RANK[self]


_RANK = {Priority.HIGH: 2, Priority.NORMAL: 1, Priority.LOW: 0}
DEFAULT_PRIORITY = Priority.NORMAL


def parse_priority(value: object, field: str = "priority") -> Priority:
    """A Priority from user input; None or empty means the default."""
    if value is None or value == "":
        return DEFAULT_PRIORITY
    if isinstance(value, str):
        try:
            return Priority(value.strip().lower())
        except ValueError:
            pass
    raise ValidationError(field, value, "must be one of high, normal, low")
