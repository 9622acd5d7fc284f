"""Child processes of the box, each in its own process group, so that stopping one never leaves a grandchild.

Every component and every "container" runs as ``python -m ...`` (or a script) with stdout and stderr in a log
file under the box directory; ``stop`` ends the whole group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from flexnpu_testsupport.waiting import WaitTimeout, wait_for

STOP_GRACE_S = 10.0
POLL_S = 0.05


class BoxError(Exception):
    """A box component did not start, or the scenario could not go on; the message says which and why."""


class Child:
    """One child process group with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BoxError(f"{self.name} was never started")
        return self.process.pid

    def start(self) -> Child:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it holds; BoxError with the log's tail when the process exits or time runs out."""

        def probe() -> bool:
            if not self.alive():
                raise BoxError(f"{self.name} exited with {self.returncode()} before {what}: {self.tail()}")
            return ready()

        try:
            wait_for(what, probe, timeout, interval=POLL_S)
        except WaitTimeout as exc:
            raise BoxError(f"{self.name}: no {what} within {timeout:.0f} s: {self.tail()}") from exc

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; returns the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # whatever the leader left behind in its group
        return process.returncode

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
