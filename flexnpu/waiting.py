"""The one ``free_port`` and the one ``wait_for`` of the project: the tests, the benchmarks, the demo's node.

A test on a loaded machine polls with a deadline instead of sleeping a fixed time: ``wait_for`` returns as soon
as the condition holds, and the deadline only bounds a failure.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_INTERVAL_S = 0.02


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError, so that a test reports it as a failure)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    interval: float = DEFAULT_INTERVAL_S,
) -> T:
    """Poll ``probe`` until it returns a truthy value, and return that value.

    ``what`` completes "timed out after N s waiting for ...". ``probe`` may raise to give up early (a process
    that exited, say); the error propagates. The probe runs once more at the deadline, so a slow poll never
    turns a condition that holds into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
