"""The CDI directory adapter: one spec file per prepared claim, written atomically, removed on unprepare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flexnpu.dra.checkpoint import atomic_write
from flexnpu.dra.core.cdi import spec_file_name


class CdiDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def spec_path(self, claim_uid: str) -> Path:
        return self.path / spec_file_name(claim_uid)

    def write(self, claim_uid: str, spec: dict[str, Any]) -> None:
        atomic_write(self.spec_path(claim_uid), json.dumps(spec, indent=1) + "\n")

    def remove(self, claim_uid: str) -> None:
        self.spec_path(claim_uid).unlink(missing_ok=True)
