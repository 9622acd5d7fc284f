"""Helpers for flexnpud tests: config files in tmp_path, a fake grant server, and real daemon processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexnpu.registration import Registration
from flexnpu_testsupport.waiting import free_port

__all__ = [
    "NPU_SMI_OUTPUT",
    "Daemon",
    "FakeGrant",
    "daemon_sections",
    "free_port",
    "http_request",
    "run_cli",
    "write_config",
]

DATA = Path(__file__).parent / "data"
NPU_SMI_OUTPUT = DATA / "npu-smi-info-8x910B3-24.1.txt"
START_TIMEOUT_S = 30.0


def write_config(directory: Path, sections: Mapping[str, Mapping[str, object]]) -> Path:
    """An INI file from ``{section: {key: value}}``."""
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) + "\n" for name, keys in sections.items()
    )
    path = directory / "flexnpud.conf"
    path.write_text(text, encoding="utf-8")
    return path


def daemon_sections(state_dir: Path, socket_dir: Path, port: int, **flexnpu: object) -> dict[str, dict[str, object]]:
    """A working config: two simulated 910B3 cards, state and socket under the test's directories."""
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "flexnpu": {"devices": "sim:910B3x2", "persistent_file_dir": state_dir, "socket_dir": socket_dir, **flexnpu},
        "ticker": {"quota": 10},
    }


@dataclass
class FakeGrant:
    """Records what the daemon hands the grant server, and serves canned stats."""

    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    pushed: list[list[Registration]] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def start(self) -> None:
        self.started = True

    def set_registrations(self, registrations: Sequence[Registration]) -> None:
        self.pushed.append(list(registrations))

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        return self.figures

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Reply:
    status: int
    body: Any


class Daemon:
    """A real flexnpud process on a loopback port; stopped with SIGTERM."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flexnpu.shim.daemon.main", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}: {self.log.read_text()}")
            if self._healthy():
                return self
            time.sleep(0.05)
        raise AssertionError(f"daemon not healthy within {START_TIMEOUT_S} s: {self.log.read_text()}")

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/service/health").status == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: object = None, token: str = "") -> Reply:
        return http_request(self.url + path, method, body, token)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def http_request(url: str, method: str = "GET", body: object = None, token: str = "") -> Reply:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, _decode(response.read()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, _decode(exc.read()))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m flexnpu.cli ARGS`` as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
