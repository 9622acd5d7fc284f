"""Fixtures for flexnpud tests (helpers live in daemon_helpers.py, importable from the tests)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import NPU_SMI_OUTPUT, Daemon


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="fxd-") as name:
        yield Path(name)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Daemons a test starts are appended here and stopped (killed if need be) afterwards."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


@pytest.fixture
def fake_npu_smi(tmp_path: Path) -> Path:
    """An ``npu-smi`` stand-in that prints a recorded ``npu-smi info`` of an 8 x 910B3 server."""
    script = tmp_path / "npu-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = info ] || exit 3\ncat '{NPU_SMI_OUTPUT}'\n", encoding="utf-8")
    script.chmod(0o755)
    return script
