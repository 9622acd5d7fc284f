"""One settings object per component, built once at start from flags > environment > file, then validated.

A component declares a frozen dataclass whose fields carry defaults and docstrings (as ``metadata["help"]``);
``load_settings`` fills it from the three layers, coercing text to each field's type, and every error names the
key and the value. Components then pass the object down explicitly: nothing reads ``os.environ`` deep inside.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from flexnpu.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def load_settings(
    cls: type[T],
    *,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    file: Path | str | None = None,
    env_prefix: str = "FLEXNPU_",
) -> T:
    """Build ``cls`` from flags (None means unset) > ``env_prefix + FIELD`` variables > a YAML/JSON file."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    from_file = read_settings_file(file) if file else {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(from_file) - known):
        log.warning("settings file %s: unknown key %r ignored", file, key)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        source, raw = _pick(field.name, flags or {}, env or {}, from_file, env_prefix)
        if source:
            values[field.name] = coerce(raw, hints[field.name], source)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(cls.__name__, values, str(exc)) from exc


def _pick(
    name: str, flags: Mapping[str, object], env: Mapping[str, str], from_file: Mapping[str, object], env_prefix: str
) -> tuple[str, object]:
    if flags.get(name) is not None:
        return "--" + name.replace("_", "-"), flags[name]
    env_key = env_prefix + name.upper()
    if env_key in env:
        return env_key, env[env_key]
    for key in (name, name.replace("_", "-"), _camel(name)):
        if key in from_file:
            return key, from_file[key]
    return "", None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def read_settings_file(path: Path | str) -> dict[str, object]:
    """A YAML or JSON mapping from ``path``; a ConfigError names the file when it is missing or malformed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError("config file", str(p), f"cannot be read ({exc.strerror})") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError("config file", str(p), f"is not valid YAML/JSON ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config file", str(p), "must hold a mapping of keys to values")
    return data


def coerce(raw: object, hint: Any, key: str) -> Any:
    """Convert ``raw`` (often text from a flag or the environment) to the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw is None or raw == "":
            return None
        return coerce(raw, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw) if isinstance(raw, list | tuple) else None
        if items is None:
            raise ConfigError(key, raw, "must be a comma-separated list")
        return tuple(coerce(i.strip() if isinstance(i, str) else i, args[0], key) for i in items if i != "")
    return _scalar(raw, hint, key)


def _scalar(raw: object, hint: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ConfigError(key, raw, "must be true or false")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(raw)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in hint)
            raise ConfigError(key, raw, f"must be one of {allowed}") from None
    if hint in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(key, raw, f"must be {'an integer' if hint is int else 'a number'}")
        try:
            value = hint(raw)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(key, raw, f"must be {'an integer' if hint is int else 'a number'}") from None
        if hint is float and not math.isfinite(value):  # "nan" and "inf" parse, and pass every bound check
            raise ConfigError(key, raw, "must be a finite number")
        return value
    if hint is Path:
        return Path(str(raw))
    if hint is str:
        return str(raw)
    return raw


def describe(settings: object) -> str:
    """One line per setting, for the log at start (secrets masked)."""
    lines = []
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if field.metadata.get("secret") and value:
            value = "***"
        lines.append(f"{field.name}={value}")
    return " ".join(lines)


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """A dataclass field with a help text (and a secret mark for ``describe``)."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple default")
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})
