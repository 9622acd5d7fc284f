"""The one ``free_port`` and the one ``wait_for`` of the project: the tests, the benchmarks, the demo's node.

A test on a loaded machine polls with a deadline instead of sleeping a fixed time: ``wait_for`` returns as soon
as the condition holds, and the deadline only bounds a failure.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_INTERVAL_S = 0.02
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
FIRST_PORT = 10_000  # below it lie the well-known and registered ports of services a machine may run
_RANDOM = random.Random()


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError, so that a test reports it as a failure)."""


def free_port(host: str = "127.0.0.1", port_range: str = PORT_RANGE_FILE) -> int:
    """A TCP port on ``host`` that nothing is bound to right now, below the kernel's ephemeral range where one
    can be found: a port from that range (what binding port 0 gives) may be taken by any process's outgoing
    connection before the caller listens on it, so a server started a few seconds later fails with EADDRINUSE."""
    low = _ephemeral_low(port_range)
    for _ in range(64):
        port = _RANDOM.randrange(FIRST_PORT, low) if low > FIRST_PORT else 0
        if port and _bindable(host, port):
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


def _ephemeral_low(path: str) -> int:
    """The lowest port of the kernel's ephemeral range (``ip_local_port_range``); 0 when it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


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
