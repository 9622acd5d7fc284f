"""Registrations on disk, so that they survive a daemon restart with no clear step (the seed needed ``clear.sh``).

One JSON file, ``{"version": 1, "registrations": [<register body>, ...]}``, replaced atomically on every change:
written to a temporary file in the same directory, fsynced, renamed over the old one, and the directory fsynced,
so a crash leaves either the old or the new file, never half of one. A file that cannot be read back is moved
aside (``<name>.corrupt-<UTC time>``) and reported by name (that includes a file nested too deeply to parse); an
entry that is no longer valid (a field out of range, a string that is not UTF-8) is reported and the original
file kept aside as well, so nothing is ever dropped silently. Temporary files that a crash left between the write
and the rename (``.<name>.*.tmp``) are removed when the file is loaded at start: only the daemon that holds the
node's port writes here.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from flexnpu.errors import FlexnpuError, ValidationError
from flexnpu.registration import Registration, parse_registration

FORMAT_VERSION: Final = 1


class StoreError(FlexnpuError):
    """The registrations file cannot be written (the change it was for is not applied)."""


@dataclass(frozen=True)
class Loaded:
    """What ``load`` found: the registrations it could read, and one line per problem (naming the file)."""

    registrations: list[Registration]
    problems: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    """Temporary files of interrupted writes, removed."""


class RegistrationStore:
    """The registrations file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Loaded:
        """The persisted registrations; an unreadable file is moved aside and reported, never dropped."""
        removed = self.remove_leftovers()
        loaded = self._load()
        return Loaded(loaded.registrations, loaded.problems, removed)

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files that interrupted writes left beside the file; returns what was removed."""
        removed = []
        for leftover in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
        return removed

    def _load(self) -> Loaded:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded([])
        except OSError as exc:
            raise StoreError(f"registrations file {self.path} cannot be read ({exc.strerror})") from exc
        try:
            entries = _entries(_parse_json(raw))
        except (ValueError, ValidationError) as exc:
            aside = self._move_aside()
            return Loaded(
                [], [f"registrations file {self.path} is corrupt ({exc}); moved to {aside}, nothing restored from it"]
            )
        return self._parse_entries(entries)

    def _parse_entries(self, entries: list[Any]) -> Loaded:
        registrations, problems = [], []
        for position, entry in enumerate(entries):
            try:
                registrations.append(parse_registration(entry))
            except ValidationError as exc:
                problems.append(f"registrations file {self.path}: entry {position} is not valid ({exc})")
        if problems:
            problems.append(f"registrations file {self.path}: original kept as {self.keep_copy('invalid')}")
        return Loaded(registrations, problems)

    def save(self, registrations: Iterable[Registration]) -> None:
        """Replace the file with ``registrations``, atomically; a StoreError when that is impossible."""
        payload = {"version": FORMAT_VERSION, "registrations": [r.to_body() for r in registrations]}
        data = json.dumps(payload, indent=1, sort_keys=True).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, data)
        except OSError as exc:
            raise StoreError(f"registrations file {self.path} cannot be written ({exc.strerror})") from exc

    def _aside_path(self, kind: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        candidate = self.path.with_name(f"{self.path.name}.{kind}-{stamp}")
        n = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{self.path.name}.{kind}-{stamp}.{n}")
            n += 1
        return candidate

    def _move_aside(self) -> Path:
        aside = self._aside_path("corrupt")
        os.replace(self.path, aside)
        return aside

    def keep_copy(self, kind: str) -> Path:
        """Copy the file to ``<name>.<kind>-<UTC time>`` before a save overwrites what it holds."""
        aside = self._aside_path(kind)
        _atomic_write(aside, self.path.read_bytes())
        return aside


def _parse_json(raw: bytes) -> object:
    """The document; a ValueError for bytes that are not UTF-8 JSON, including JSON nested past the parser's limit."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise ValueError("nested too deeply to parse") from exc


def _entries(document: object) -> list[Any]:
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValidationError(
            "version",
            document.get("version") if isinstance(document, dict) else document,
            f"the file must be an object with version {FORMAT_VERSION}",
        )
    entries = document.get("registrations")
    if not isinstance(entries, list):
        raise ValidationError("registrations", entries, "must be a list")
    return entries


def _atomic_write(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
