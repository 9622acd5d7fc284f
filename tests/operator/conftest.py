"""Fixtures of the operator's tests: the kmock API emulator, real flexnpud processes, the operator in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from flexnpu.operator.settings import OperatorSettings
from flexnpu_testsupport.operatorkit import DaemonProcess, create, daemon_pod, kubernetes


@pytest.fixture
def settings() -> OperatorSettings:
    """Fast re-checks and retries; no metrics port unless a test asks for one."""
    return OperatorSettings(
        resync_interval=0.5, retry_base=0.02, retry_cap=0.1, handler_retry_delay=0.3, metrics_port=0, daemon_timeout=2.0
    )


@pytest.fixture
async def kube() -> AsyncIterator[Any]:
    async with kubernetes() as emulator:
        yield emulator


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[DaemonProcess]]]:
    """Starts real flexnpud processes on demand (one per node) and stops every one at the end."""
    started: list[DaemonProcess] = []

    async def start(node: str) -> DaemonProcess:
        daemon = DaemonProcess(node=node, workdir=tmp_path)
        started.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()


@pytest.fixture
async def node(
    kube: Any, daemons: Callable[[str], Awaitable[DaemonProcess]], settings: OperatorSettings
) -> DaemonProcess:
    """Node ``node-a`` with its daemon running and its DaemonSet pod in the API."""
    daemon = await daemons("node-a")
    await create(kube, daemon_pod("node-a", daemon.port, settings))
    return daemon
