"""The plugin's checkpoint: the claims it prepared, so that a restart re-reads them and disturbs nothing.

File format (JSON): ``{"version": 1, "claims": {<claim uid>: {"namespace", "name", "registrations": [ids],
"devices": [{"request", "pool", "device", "cdi_ids": [...], "share_id"}]}}}``. Every write goes to a temporary
file in the same directory, is fsynced and renamed over the old one: a crash leaves the old or the new file.
An unreadable checkpoint at start is an error (the plugin must not forget registrations silently).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flexnpu._decode import as_list, as_mapping, get_str
from flexnpu.errors import FlexnpuError, ValidationError

VERSION = 1


class CheckpointError(FlexnpuError):
    pass


@dataclass(frozen=True)
class PreparedDeviceRecord:
    request: str
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str = ""


@dataclass(frozen=True)
class ClaimRecord:
    namespace: str
    name: str
    registrations: tuple[str, ...]
    devices: tuple[PreparedDeviceRecord, ...]


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.claims: dict[str, ClaimRecord] = self._read()

    def put(self, uid: str, record: ClaimRecord) -> None:
        self.claims[uid] = record
        self._write()

    def drop(self, uid: str) -> None:
        if self.claims.pop(uid, None) is not None:
            self._write()

    def _write(self) -> None:
        body = {"version": VERSION, "claims": {uid: asdict(r) for uid, r in sorted(self.claims.items())}}
        atomic_write(self.path, json.dumps(body, indent=1, sort_keys=True) + "\n")

    def _read(self) -> dict[str, ClaimRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CheckpointError(f"{self.path}: {exc.strerror}") from exc
        try:
            return parse_checkpoint(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise CheckpointError(f"{self.path}: unreadable checkpoint: {exc}") from exc


def parse_checkpoint(raw: object) -> dict[str, ClaimRecord]:
    body = as_mapping(raw, "checkpoint")
    if body.get("version") != VERSION:
        raise ValidationError("version", body.get("version"), f"must be {VERSION}")
    out: dict[str, ClaimRecord] = {}
    for uid, entry in as_mapping(body.get("claims", {}), "claims").items():
        prefix = f"claims.{uid}."
        claim = as_mapping(entry, prefix)
        out[uid] = ClaimRecord(
            namespace=get_str(claim, "namespace", prefix),
            name=get_str(claim, "name", prefix),
            registrations=tuple(_strings(claim.get("registrations", []), prefix + "registrations")),
            devices=tuple(
                _device(d, f"{prefix}devices[{i}].")
                for i, d in enumerate(as_list(claim.get("devices", []), prefix + "devices"))
            ),
        )
    return out


def _device(raw: object, prefix: str) -> PreparedDeviceRecord:
    device: dict[str, Any] = dict(as_mapping(raw, prefix))
    return PreparedDeviceRecord(
        request=get_str(device, "request", prefix),
        pool=get_str(device, "pool", prefix),
        device=get_str(device, "device", prefix),
        cdi_ids=tuple(_strings(device.get("cdi_ids", []), prefix + "cdi_ids")),
        share_id=get_str(device, "share_id", prefix, default="", allow_empty=True),
    )


def _strings(raw: object, field: str) -> list[str]:
    return [get_str({"v": v}, "v", f"{field}[{i}]") for i, v in enumerate(as_list(raw, field))]
