"""Fixtures of the runtime tests: a real simulated-NPU process, an in-process grant server, child processes.

Every child runs with ``cwd=tmp_path`` (the repository root would shadow the standard library's ``operator``) and
a bounded timeout; every server is stopped and every socket lives under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import CARD, wait_for

from flexnpu.registration import Registration
from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.grant.server import GrantServer


@pytest.fixture
def sim_socket(tmp_path: Path) -> Iterator[str]:
    """A real ``flexnpu simnpu`` process with one simulated 910B3."""
    path = str(tmp_path / "simnpu.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexnpu.cli", "simnpu", "--socket", path],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: os.path.exists(path) or proc.poll() is not None, "the simulated NPU")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    return root


@pytest.fixture
def grant_socket(tmp_path: Path) -> str:
    return str(tmp_path / "grant.sock")


@pytest.fixture
def make_grant_server(grant_socket: str, proc_root: Path) -> Iterator[Callable[..., GrantServer]]:
    servers: list[GrantServer] = []

    def make(registrations: Sequence[Registration], policy: SlicePolicy | None = None, **options: Any) -> GrantServer:
        server = GrantServer(
            grant_socket, policy or SlicePolicy(quota=10, slice_us=2000), [CARD], proc_root=proc_root, **options
        )
        server.start()
        servers.append(server)
        server.set_registrations(registrations)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start long-running child processes that are always stopped at the end of the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            cwd=tmp_path,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
