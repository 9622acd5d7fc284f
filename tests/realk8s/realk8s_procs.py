"""Processes of the realk8s suite: each in its own process group, output to a log file, stopped for certain.

A component that dies while the suite waits for it fails the wait at once with the tail of its log, instead
of letting the wait run to its deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from flexnpu import waiting

T = TypeVar("T")


class ComponentDied(RuntimeError):
    """A component exited while the suite still needed it."""


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Proc:
    """One component process, leader of its own process group."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pgid = self.popen.pid

    def check(self) -> None:
        """Raise ComponentDied when the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise ComponentDied(f"{self.name} exited with {code}; log {self.log}:\n{log_tail(self.log)}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds, and reap the leader."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if not group_alive(self.pgid):
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.popen.poll()
                if not group_alive(self.pgid):
                    break
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool | None:
    """True when GET ``url`` answers 200, None for any other answer (the error response closed)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:
            return True if resp.status == 200 else None
    except urllib.error.HTTPError as exc:
        exc.close()
        return None


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, watch: Sequence[Proc] = (), interval: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something other than None; fail fast when a watched process dies.

    The polling is ``flexnpu.waiting.wait_for``; here a probe that raises (a component still starting) is retried,
    and the last such error is named when time runs out.
    """
    last_error: list[Exception] = []

    def boxed() -> tuple[T] | None:
        for proc in watch:
            proc.check()
        try:
            result = probe()
        except Exception as exc:  # the probe talks to a component that is still starting
            last_error[:] = [exc]
            return None
        return None if result is None else (result,)

    try:
        return waiting.wait_for(what, boxed, timeout, interval=interval)[0]
    except waiting.WaitTimeout as exc:
        last = repr(last_error[0]) if last_error else "None"
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last}") from exc
