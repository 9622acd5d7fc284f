"""Helpers of the runtime tests (a uniquely named module: conftest.py names clash across test folders)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flexnpu import names, waiting
from flexnpu.cards import Card
from flexnpu.priority import Priority
from flexnpu.registration import Registration
from flexnpu.shim.cli import SITE_DIR

POD_A = "11111111-2222-3333-4444-555555555555"
POD_B = "99999999-8888-7777-6666-555555555555"
CARD = Card.of_model("910B3", 0, "card-0")


class ManualClock:
    """The grant server's clock in tests: microseconds that move only when the test moves them."""

    def __init__(self, now_us: int = 1_000_000) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Bounded polling for a condition (never a fixed sleep): ``flexnpu.waiting.wait_for``, condition first."""
    waiting.wait_for(what, condition, timeout_s, interval=0.01)


def registration(
    flexnpu_id: str, units: int = 5, pod_uid: str = "", priority: Priority = Priority.NORMAL, memory_mib: int = 1024
) -> Registration:
    return Registration(
        flexnpu_id,
        f"test {flexnpu_id}",
        npu=0,
        aicore_alloc=units,
        memory_alloc=memory_mib,
        priority=priority,
        pod_uid=pod_uid,
    )


def fake_cgroup(proc_root: Path, pid: int, pod_uid: str) -> None:
    """What kubelet's systemd cgroup driver leaves in /proc/<pid>/cgroup for a container of pod ``pod_uid``."""
    (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
    slice_uid = pod_uid.replace("-", "_")
    (proc_root / str(pid) / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/"
        f"cri-containerd-0123abcd.scope\n",
        encoding="utf-8",
    )


def runtime_env(tmp_path: Path, claim: str, grant_socket: str, device: str, **extra: str) -> dict[str, str]:
    """The environment the device plugin gives a pod, with the runtime's sitecustomize on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXNPU_")}
    env["PYTHONPATH"] = SITE_DIR
    env.update(
        {names.ENV_CLAIM: claim, names.ENV_SOCKET: grant_socket, names.ENV_DEVICE: device, names.ENV_SHARE: "0.5"}
    )
    env.update(extra)
    return env


def run_child(
    tmp_path: Path, code: str, env: dict[str, str] | None = None, args: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = list(args) if args is not None else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
