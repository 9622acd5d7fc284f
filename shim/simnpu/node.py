"""A simulated node as real processes: the simulated NPU (``flexnpu simnpu``), the node daemon (``flexnpu daemon``
with ``devices = sim:910B3x1``) and tenant processes activated the way a pod is (the runtime's ``sitecustomize`` on
PYTHONPATH plus the FLEXNPU_* variables). The demo and the real-time benchmarks run on it.

Every child runs in the node's temporary directory (never the repository root, whose ``operator`` folder would
shadow the standard library) and is stopped when the ``simulated_node`` block ends, on error and on Ctrl-C or
SIGTERM too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from flexnpu import names
from flexnpu.shim.cli import SITE_DIR
from flexnpu.waiting import WaitTimeout, free_port, wait_for


class NodeError(Exception):
    """A part of the simulated node did not come up or a tenant failed; the message says which."""


@dataclass(frozen=True)
class NodeConfig:
    """The daemon's slicing settings for the node (flexnpud.conf keys)."""

    quota: int = 10
    oversubscription: float = 1.0
    share_in_idle: bool = True
    policy: str = "share"
    slice_us: int = 2000
    ticker_interval_us: int = 10000


@dataclass
class Node:
    """The processes of the simulated node and where they listen."""

    workdir: Path
    config: NodeConfig
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sim_socket: str = ""
    grant_socket: str = ""
    port: int = 0
    daemon_pid: int = 0

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "flexnpu.cli", *args]


def _last_line(proc: subprocess.Popen[bytes]) -> str:
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    return err.splitlines()[-1] if err else "no output"


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise NodeError(f"{what} exited with {proc.returncode}: {_last_line(proc)}")
        return ready()

    try:
        wait_for(what, up, timeout_s, interval=0.05)
    except WaitTimeout as exc:
        raise NodeError(f"{what} did not come up within {timeout_s:.0f} s") from exc


def start_simnpu(node: Node) -> None:
    node.sim_socket = str(node.workdir / "simnpu.sock")
    proc = subprocess.Popen(
        _python("simnpu", "--socket", node.sim_socket, "--model", "910B3"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=node.workdir,
    )
    node.procs.append(proc)
    _wait_for("flexnpu simnpu", lambda: os.path.exists(node.sim_socket), proc)


def daemon_config(node: Node) -> str:
    c = node.config
    return (
        f"[server]\nhost = 127.0.0.1\nport = {node.port}\n[logger]\nlog_level = WARNING\n"
        f"[flexnpu]\nschedule_cycle = {c.slice_us}\npersistent_file_dir = {node.workdir / 'state'}\n"
        f"share_in_idle = {str(c.share_in_idle).lower()}\ndevices = sim:910B3x1\n"
        f"oversubscription = {c.oversubscription}\npolicy = {c.policy}\nsocket_dir = {shim_dir(node)}\n"
        f"[ticker]\nquota = {c.quota}\nticker_interval = {c.ticker_interval_us}\n"
    )


def start_daemon(node: Node) -> None:
    node.port = free_port()
    conf = node.workdir / "flexnpud.conf"
    conf.write_text(daemon_config(node), encoding="utf-8")
    node.grant_socket = str(shim_dir(node) / names.SHIM_SOCKET_NAME)
    proc = subprocess.Popen(
        _python("daemon", "--config", str(conf)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=node.workdir
    )
    node.procs.append(proc)
    node.daemon_pid = proc.pid
    _wait_for("flexnpu daemon", lambda: _healthy(node.port) and os.path.exists(node.grant_socket), proc)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/service/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def register(node: Node, name: str, units: int, priority: str = "normal", memory_mib: int = 4096) -> None:
    """POST /device/register on the node's daemon (the seed's body plus priority)."""
    body = {
        "flexnpu_id": name,
        "entity": f"simulated tenant {name}",
        "npu": 0,
        "chip": 0,
        "aicore_alloc": units,
        "memory_alloc": memory_mib,
        "priority": priority,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}/device/register",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except OSError as exc:
        raise NodeError(f"registering {name} with flexnpud failed: {exc}") from exc


def shim_dir(node: Node) -> Path:
    """flexnpud's shim directory: the grant socket, the card regions and the registrations' slots."""
    return node.workdir / "run"


def tenant_env(
    node: Node, name: str, units: int, priority: str = "normal", memory_mib: int = 4096, gated: bool = True
) -> dict[str, str]:
    """What the device plugin would inject into the pod of tenant ``name``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SITE_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env.update(
        {
            names.ENV_CLAIM: name,
            names.ENV_SOCKET: node.grant_socket,
            names.ENV_DEVICE: "simnpu:" + node.sim_socket,
            names.ENV_SHARE: str(units / node.config.quota),
            names.ENV_MEMORY_MIB: str(memory_mib),
            names.ENV_PRIORITY: priority,
        }
    )
    if not gated:
        env[names.ENV_SHIM_DISABLE] = "1"
    return env


def start_worker(node: Node, module: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m module args...`` as a tenant process of the node."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=node.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    node.procs.append(proc)
    return proc


def wait_worker(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise NodeError("a tenant did not finish in time") from exc
    if proc.returncode != 0:
        raise NodeError(f"a tenant failed ({proc.returncode}): {_last_line(proc)}")


def wait_until(at: float) -> None:
    """Sleep until the monotonic clock (shared by every process of the machine) reads ``at``."""
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@contextmanager
def simulated_node(config: NodeConfig, prefix: str = "flexnpu-demo-", simnpu: bool = True) -> Iterator[Node]:
    """The simulated NPU and flexnpud running; every process is stopped when the block ends. ``simnpu`` False:
    flexnpud only (the tenants bring their device: the fake device libraries map one shared card file)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        node = Node(Path(workdir), config)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if simnpu:
                start_simnpu(node)
            start_daemon(node)
            yield node
        finally:
            node.stop()
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
