"""Kubernetes resource quantities (``cpu: "500m"``, ``memory: "16Gi"``, ``huawei.com/vnpu-memory: "2k"``).

kube-scheduler counts CPU in millicores and memory in bytes; the extender keeps CPU in millicores (rounded up, as
Kubernetes rounds a request) and memory in MiB (rounded up). Extended resources (``huawei.com/vnpu``,
``huawei.com/vnpu-memory``) are whole numbers, but the API server stores them in canonical form: a request of
2000 reads back as ``"2k"``, so every component reads them through :func:`whole_quantity`. Every value comes from
a pod or a node, so it is hostile: anything that is not a finite, non-negative quantity of bounded size is a
:class:`ValidationError` naming the field. Pure translation, no I/O.

Public names (stable): :func:`parse_quantity`, :func:`cpu_milli`, :func:`memory_mib`, :func:`whole_quantity`,
:data:`MAX_CPU_MILLI`, :data:`MAX_MEMORY_MIB`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

from flexnpu.errors import ValidationError

# Far above any real node (a million cores, an exbibyte), low enough that sums over a cluster stay exact ints.
MAX_CPU_MILLI: Final = 10**9
MAX_MEMORY_MIB: Final = 2**40
_MAX_TEXT: Final = 64
_MIB: Final = 2**20

_SUFFIXES: Final[dict[str, Fraction]] = {
    "": Fraction(1), "m": Fraction(1, 1000), "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
    "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10),
    "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}  # fmt: skip
_QUANTITY: Final = re.compile(r"^\+?(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,3})|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$")


def parse_quantity(raw: object, field: str) -> Fraction:
    """The exact value of a quantity (a JSON number or a Kubernetes quantity string); negative is refused."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValidationError(field, raw, "must be a Kubernetes quantity such as 500m, 2 or 16Gi")
    text = raw.strip() if isinstance(raw, str) else repr(raw)
    match = _QUANTITY.match(text) if len(text) <= _MAX_TEXT else None
    if match is None:
        raise ValidationError(
            field,
            raw if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "...",
            "must be a non-negative Kubernetes quantity such as 500m, 2 or 16Gi",
        )
    number, exponent, suffix = match.groups()
    value = Fraction(number)
    if exponent is not None:
        value *= Fraction(10) ** int(exponent)
    return value * _SUFFIXES[suffix or ""]


def cpu_milli(raw: object, field: str = "cpu") -> int:
    """CPU in millicores, rounded up; at most :data:`MAX_CPU_MILLI`."""
    value = -(-parse_quantity(raw, field) * 1000 // 1)
    return _bounded(int(value), MAX_CPU_MILLI, raw, field)


def memory_mib(raw: object, field: str = "memory") -> int:
    """Memory in MiB, rounded up; at most :data:`MAX_MEMORY_MIB`."""
    value = -(-parse_quantity(raw, field) // _MIB)
    return _bounded(int(value), MAX_MEMORY_MIB, raw, field)


def whole_quantity(raw: object, field: str, limit: int = 10**18) -> int:
    """An extended resource's whole number (``3``, ``"2000"``, ``"2k"``); fractions and values past limit refused."""
    value = parse_quantity(raw, field)
    if value.denominator != 1:
        raise ValidationError(field, raw, "must be a whole number")
    if value > limit:
        raise ValidationError(field, raw, f"must be at most {limit}")
    return int(value)


def _bounded(value: int, limit: int, raw: object, field: str) -> int:
    if value > limit:
        raise ValidationError(field, raw, f"is larger than any node ({limit} at most)")
    return value
