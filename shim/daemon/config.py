"""flexnpud.conf: the seed daemon's INI sections and keys, plus ours, read once into one frozen DaemonSettings.

Every key has a default (see the shipped ``flexnpud.conf`` next to this module). A malformed or out-of-range
value raises a ConfigError whose field is ``[section] key``, so the daemon stops with one line naming it;
unknown sections and keys are returned as warnings, which the daemon logs, because a typo must not go unnoticed.
"""

from __future__ import annotations

import argparse
import configparser
import ipaddress
import logging
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from flexnpu import names
from flexnpu.errors import ConfigError
from flexnpu.names import SHIM_SOCKET_DIR, SHIM_SOCKET_NAME
from flexnpu.settings import setting

DEFAULT_PORT: Final = names.DAEMON_PORT
DEFAULT_HOST: Final = "127.0.0.1"
REGISTRATIONS_FILE: Final = "registrations.json"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
AUTH_MODES: Final = ("auto", "token")
POLICIES: Final = ("share", "ops")
ENFORCE_MEMORY: Final = ("report", "kill")
MEMORY_SOURCES: Final = ("auto", "npu-smi", "nvml", "slots")


@dataclass(frozen=True)
class DaemonSettings:
    """Everything flexnpud is configured with; built once at start by ``load_config`` and passed down."""

    host: str = setting(DEFAULT_HOST, "[server] host: address the HTTP API binds to (loopback by default)")
    port: int = setting(DEFAULT_PORT, "[server] port: TCP port of the HTTP API")
    auth: str = setting("auto", "[server] auth: auto (bearer token on non-loopback addresses) or token (always)")
    log_level: str = setting("INFO", "[logger] log_level: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    log_file: str = setting("", "[logger] log_file: log file path; empty logs to stderr")
    log_file_size: int = setting(10, "[logger] log_file_size: MiB before the log file is rotated")
    log_file_archive_count: int = setting(5, "[logger] log_file_archive_count: rotated log files kept")
    schedule_cycle: int = setting(2000, "[flexnpu] schedule_cycle: slice length in microseconds")
    persistent_file_dir: str = setting("/var/lib/flexnpu", "[flexnpu] persistent_file_dir: registrations file dir")
    share_in_idle: bool = setting(False, "[flexnpu] share_in_idle: hand idle device time to backlogged tenants")
    devices: str = setting("auto", "[flexnpu] devices: auto (npu-smi) or sim:<model>x<count>")
    npu_smi: str = setting("npu-smi", "[flexnpu] npu_smi: the npu-smi command devices=auto runs")
    oversubscription: float = setting(1.0, "[flexnpu] oversubscription: aicore sums may reach quota times this")
    policy: str = setting("share", "[flexnpu] policy: share (device-time slices) or ops (the seed's op counting)")
    token_file: str = setting("", "[flexnpu] token_file: file holding the API bearer token", secret=False)
    socket_dir: str = setting(SHIM_SOCKET_DIR, "[flexnpu] socket_dir: directory of the grant socket")
    enforce_memory: str = setting(
        "report",
        "[flexnpu] enforce_memory: report (log, metric, status) or kill "
        "(SIGKILL the processes of a pod past its memory cap)",
    )
    memory_watch_interval: float = setting(
        5.0, "[flexnpu] memory_watch_interval: seconds between reads of device memory per process"
    )
    memory_source: str = setting(
        "auto",
        "[flexnpu] memory_source: where per-process device memory is read: npu-smi, nvml (CUDA nodes), "
        "slots (the pods' own accounts), or auto (npu-smi with devices=auto, else slots)",
    )
    nvml_library: str = setting(
        "libnvidia-ml.so.1", "[flexnpu] nvml_library: the NVML library memory_source=nvml loads"
    )
    ticker_interval: int = setting(10000, "[ticker] ticker_interval: round length of the ops policy, microseconds")
    quota: int = setting(10, "[ticker] quota: aicore units of one card (0 < quota <= 16)")

    @property
    def registrations_path(self) -> Path:
        return Path(self.persistent_file_dir) / REGISTRATIONS_FILE

    @property
    def socket_path(self) -> Path:
        return Path(self.socket_dir) / SHIM_SOCKET_NAME

    @property
    def token_required(self) -> bool:
        return token_required(self.host, self.auth)


@dataclass(frozen=True)
class _Key:
    section: str
    key: str
    parse: Callable[[str, str], Any]


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(name, text, "must be an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(name, value, f"must be in {lo}..{hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(name, text, "must be a number") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ConfigError(name, value, f"must be a number in {lo:g}..{hi:g}")
        return value

    return parse


def _choice(*allowed: str, upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        value = text.upper() if upper else text.lower()
        if value not in allowed:
            raise ConfigError(name, text, f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _bool(name: str, text: str) -> bool:
    value = text.lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ConfigError(name, text, "must be true or false")


def _text(*, allow_empty: bool) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        if not text and not allow_empty:
            raise ConfigError(name, text, "must not be empty")
        return text

    return parse


_KEYS: Final[dict[str, _Key]] = {
    "host": _Key("server", "host", _text(allow_empty=False)),
    "port": _Key("server", "port", _int(1, 65535)),
    "auth": _Key("server", "auth", _choice(*AUTH_MODES)),
    "log_level": _Key("logger", "log_level", _choice(*LOG_LEVELS, upper=True)),
    "log_file": _Key("logger", "log_file", _text(allow_empty=True)),
    "log_file_size": _Key("logger", "log_file_size", _int(1, 10240)),
    "log_file_archive_count": _Key("logger", "log_file_archive_count", _int(0, 100)),
    "schedule_cycle": _Key("flexnpu", "schedule_cycle", _int(100, 1_000_000)),
    "persistent_file_dir": _Key("flexnpu", "persistent_file_dir", _text(allow_empty=False)),
    "share_in_idle": _Key("flexnpu", "share_in_idle", _bool),
    "devices": _Key("flexnpu", "devices", _text(allow_empty=False)),
    "npu_smi": _Key("flexnpu", "npu_smi", _text(allow_empty=False)),
    "oversubscription": _Key("flexnpu", "oversubscription", _float(1.0, 16.0)),
    "policy": _Key("flexnpu", "policy", _choice(*POLICIES)),
    "token_file": _Key("flexnpu", "token_file", _text(allow_empty=True)),
    "socket_dir": _Key("flexnpu", "socket_dir", _text(allow_empty=False)),
    "enforce_memory": _Key("flexnpu", "enforce_memory", _choice(*ENFORCE_MEMORY)),
    "memory_watch_interval": _Key("flexnpu", "memory_watch_interval", _float(0.1, 3600.0)),
    "memory_source": _Key("flexnpu", "memory_source", _choice(*MEMORY_SOURCES)),
    "nvml_library": _Key("flexnpu", "nvml_library", _text(allow_empty=False)),
    "ticker_interval": _Key("ticker", "ticker_interval", _int(100, 10_000_000)),
    "quota": _Key("ticker", "quota", _int(1, 16)),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage block), like every other start-up error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def key_name(field_name: str) -> str:
    """The ``[section] key`` spelling of a settings field, as errors and logs show it."""
    spec = _KEYS[field_name]
    return f"[{spec.section}] {spec.key}"


def load_config(path: Path | str) -> tuple[DaemonSettings, list[str]]:
    """DaemonSettings from the INI file at ``path``, and warnings about keys it does not know."""
    parser = _read(Path(path))
    values: dict[str, Any] = {}
    for name, spec in _KEYS.items():
        if parser.has_option(spec.section, spec.key):
            text = parser.get(spec.section, spec.key).strip()
            values[name] = spec.parse(key_name(name), _unquote(text))
    return DaemonSettings(**values), _unknown_keys(parser, Path(path))


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with path.open(encoding="utf-8") as stream:
            parser.read_file(stream)
    except OSError as exc:
        raise ConfigError("config file", str(path), f"cannot be read ({exc.strerror})") from exc
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError("config file", str(path), f"is not a valid INI file ({first_line})") from exc
    return parser


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _unknown_keys(parser: configparser.ConfigParser, path: Path) -> list[str]:
    known = {(spec.section, spec.key) for spec in _KEYS.values()}
    sections = {spec.section for spec in _KEYS.values()}
    warnings = []
    for section in parser.sections():
        if section not in sections:
            warnings.append(f"{path}: unknown section [{section}] ignored")
            continue
        warnings += [
            f"{path}: unknown key [{section}] {key} ignored"
            for key in parser.options(section)
            if (section, key) not in known
        ]
    return warnings


def token_required(host: str, auth: str) -> bool:
    """Whether every request except the health check must carry the bearer token.

    Loopback addresses are reachable only from the node itself; anything else (the node address, 0.0.0.0,
    a host name) is reachable from the network, so it always needs the token.
    """
    return auth == "token" or not is_loopback(host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(settings: DaemonSettings) -> str:
    """The bearer token from ``token_file`` ("" when none is configured); a ConfigError when it is unusable."""
    name = key_name("token_file")
    if not settings.token_file:
        if settings.token_required:
            raise ConfigError(
                name, "", f"a token is required when the API binds to {settings.host!r} (auth={settings.auth})"
            )
        return ""
    try:
        token = Path(settings.token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(name, settings.token_file, f"cannot be read ({exc.strerror})") from exc
    if not token:
        raise ConfigError(name, settings.token_file, "holds no token")
    return token


def describe_settings(settings: DaemonSettings) -> str:
    """One ``[section] key=value`` list for the start-up log."""
    return ", ".join(f"{key_name(f.name)}={getattr(settings, f.name)}" for f in fields(settings))


def configure_logging(settings: DaemonSettings) -> None:
    """Root logging to stderr or to a rotated file, as ``[logger]`` says."""
    handler: logging.Handler
    if settings.log_file:
        from logging.handlers import RotatingFileHandler

        handler = RotatingFileHandler(
            settings.log_file,
            maxBytes=settings.log_file_size << 20,
            backupCount=settings.log_file_archive_count,
            encoding="utf-8",
        )
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
