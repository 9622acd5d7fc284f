"""Small typed readers for JSON payloads: each names the field and value it rejects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flexnpu.errors import ValidationError


def as_mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, "must be a JSON object")
    return value


def as_list(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValidationError(field, value, "must be a JSON list")
    return value


def get_int(
    body: Mapping[str, Any],
    key: str,
    prefix: str = "",
    *,
    lo: int = 0,
    hi: int | None = None,
    default: int | None = None,
) -> int:
    field = prefix + key
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "must be an integer")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValidationError(field, value, f"must be in {bound}")
    return value


def get_str(
    body: Mapping[str, Any],
    key: str,
    prefix: str = "",
    *,
    default: str | None = None,
    allow_empty: bool = False,
    max_len: int = 253,
) -> str:
    field = prefix + key
    value = body.get(key, default)
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be a string")
    if not allow_empty and not value:
        raise ValidationError(field, value, "must not be empty")
    if len(value) > max_len:
        raise ValidationError(field, value[:40] + "...", f"must be at most {max_len} characters")
    return require_utf8(value, field)


def require_utf8(value: str, field: str) -> str:
    """``value`` when it can be written as UTF-8; JSON's ``"\\ud800"`` escapes decode to lone surrogates that cannot.

    Such a string would be accepted, persisted, and then break every consumer that encodes it (the metrics
    exporter, a log file, the Kubernetes API), so it is refused where it enters.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = value[:40].encode("utf-8", "backslashreplace").decode("utf-8")
        raise ValidationError(field, shown, f"is not valid Unicode (lone surrogate at {exc.start})") from exc
    return value


def get_float(body: Mapping[str, Any], key: str, prefix: str = "", *, default: float | None = None) -> float:
    field = prefix + key
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, value, "must be a number")
    return float(value)
