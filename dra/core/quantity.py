"""Kubernetes resource Quantities ("3", "16Gi", "1.5G", "500M"), as exact numbers. Pure.

Only the forms the API server writes back are accepted: an optional sign is refused (capacities are never
negative), a decimal number, then one binary (Ki..Ei) or decimal (m, k, M..E) suffix or a decimal exponent.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from flexnpu.errors import ValidationError

_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][0-9]+)?$"
)
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    **{s: Decimal(2) ** (10 * (i + 1)) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
MAX_LENGTH = 64


def parse_quantity(value: object, field: str) -> Decimal:
    """The exact value of a non-negative Quantity (a string, or a JSON integer); ValidationError names ``field``."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise ValidationError(field, value, "must be a Quantity string such as '3' or '16Gi'")
    match = _QUANTITY.match(text) if len(text) <= MAX_LENGTH else None
    if match is None:
        raise ValidationError(field, value, "is not a non-negative Quantity (e.g. '3', '16Gi', '500M')")
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["number"])
        scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else _SUFFIX[suffix]
    except (InvalidOperation, ValueError, OverflowError) as exc:  # pragma: no cover - the regex admits none
        raise ValidationError(field, value, "is not a Quantity") from exc
    if suffix[:1] in ("e", "E") and int(suffix[1:]) > 30:
        raise ValidationError(field, value, "is out of range")
    return number * scale


def whole(value: Decimal, field: str, raw: object) -> int:
    """``value`` as an int; a fractional value is refused (units are counted, not measured)."""
    if value != value.to_integral_value():
        raise ValidationError(field, raw, "must be a whole number")
    return int(value)


def bytes_to_mib(value: Decimal) -> int:
    """Bytes rounded up to whole MiB."""
    mib = value / (1 << 20)
    return int(mib.to_integral_value(rounding="ROUND_CEILING"))
