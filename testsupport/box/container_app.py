"""The program a box "container" runs: a tenant of the simulated NPU under the in-pod runtime.

It is started by the box's kubelet as ``python -S container_app.py`` with the environment that the device
plugin's Allocate returned (``FLEXNPU_*`` and ``PYTHONPATH`` pointing at the injected runtime directory), so it
imports the runtime from that directory with the standard library alone, exactly as a pod does. The box adds
what a container runtime would provide: ``FLEXNPU_BOX_SIMNPU`` (the simulated card, standing for the
``/dev/davinciN`` node), the downward API's ``POD_UID``, and where to write its progress (``FLEXNPU_BOX_STATUS``).

Workloads: ``batch`` launches kernels back to back; ``critical`` runs short steps (one grant each) with think
time between them and records each step's latency. Progress goes to the status file every ~0.1 s (atomic
rename), so the box can tell that the process keeps making progress while components restart. SIGTERM ends it.

Standard library and the runtime only: this file must run without site-packages (Python 3.9+).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from types import FrameType
from typing import Any

from flexnpu.shim.runtime.grant_client import GrantClient
from flexnpu.shim.runtime.simnpu_adapter import GatedSimNpu
from flexnpu.shim.runtime.simnpu_client import SimNpuClient

BATCH_KERNEL_US = 500
BATCH_STEP_KERNELS = 10
CRITICAL_KERNEL_US = 250
CRITICAL_STEP_KERNELS = 4
CRITICAL_THINK_S = 0.02
STATUS_EVERY_S = 0.1
REGISTRATION_WAIT_S = 60.0
KEEP_LATENCIES = 4000

stopping: list[int] = []


def on_term(signum: int, frame: FrameType | None) -> None:
    stopping.append(signum)


def find_registration(daemon_url: str, pod_uid: str) -> str:
    """The id of the registration the operator made for this pod (matched by the downward API's pod UID).

    Allocate tells a pod its claim's name, not its registration id (the claim's uid is part of the id), so the
    box's container looks the id up on its node's daemon. It waits: the operator may register after start.
    """
    deadline = time.monotonic() + REGISTRATION_WAIT_S
    while time.monotonic() < deadline and not stopping:
        try:
            with urllib.request.urlopen(daemon_url + "/device/flexnpu-info", timeout=5) as reply:
                info = json.loads(reply.read())
            for registration in info.get("registrations", []):
                if registration.get("pod_uid") == pod_uid:
                    return str(registration["flexnpu_id"])
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"container: no registration for pod {pod_uid} on {daemon_url}")


class Progress:
    """What the box reads: steps, kernels, step latencies, errors, reconnects of the grant client."""

    def __init__(self, path: str, flexnpu_id: str) -> None:
        self.path = path
        self.state: dict[str, Any] = {
            "id": flexnpu_id,
            "pid": os.getpid(),
            "steps": 0,
            "kernels": 0,
            "latencies_us": [],
            "errors": [],
            "reconnects": 0,
            "updated": time.time(),
        }
        self._last = 0.0

    def step(self, kernels: int, latency_us: float | None = None) -> None:
        self.state["steps"] += 1
        self.state["kernels"] += kernels
        if latency_us is not None:
            latencies: list[float] = self.state["latencies_us"]
            latencies.append(round(latency_us, 1))
            del latencies[:-KEEP_LATENCIES]

    def write(self, grants: GrantClient, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < STATUS_EVERY_S:
            return
        self._last = now
        self.state["updated"] = time.time()
        self.state["reconnects"] = grants.reconnects
        tmp = self.path + ".tmp"
        with open(tmp, "w") as out:
            json.dump(self.state, out)
        os.replace(tmp, self.path)


def run_batch(device: GatedSimNpu, progress: Progress, grants: GrantClient) -> None:
    while not stopping:
        for _ in range(BATCH_STEP_KERNELS):
            device.launch(BATCH_KERNEL_US)
        device.client.synchronize()
        progress.step(BATCH_STEP_KERNELS)
        progress.write(grants)


def run_critical(device: GatedSimNpu, progress: Progress, grants: GrantClient) -> None:
    while not stopping:
        started = time.perf_counter()
        with device.step():
            for _ in range(CRITICAL_STEP_KERNELS):
                device.launch(CRITICAL_KERNEL_US)
        progress.step(CRITICAL_STEP_KERNELS, (time.perf_counter() - started) * 1e6)
        progress.write(grants)
        time.sleep(CRITICAL_THINK_S)


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    env = os.environ
    flexnpu_id = find_registration(env["FLEXNPU_BOX_DAEMON"], env["POD_UID"])
    grants = GrantClient(env["FLEXNPU_SOCKET"], flexnpu_id, float(env["FLEXNPU_SHARE"]), reconnect_interval_s=0.2)
    card = int(env["FLEXNPU_CARD_INDEX"].split(",")[0])
    client = SimNpuClient(
        env["FLEXNPU_BOX_SIMNPU"], name=env["POD_NAME"], card=card, cap_mib=int(env["FLEXNPU_MEMORY_MIB"])
    )
    device = GatedSimNpu(client, grants)
    progress = Progress(env["FLEXNPU_BOX_STATUS"], flexnpu_id)
    device.allocate(min(1024, int(env["FLEXNPU_MEMORY_MIB"])))
    try:
        if env.get("FLEXNPU_BOX_WORKLOAD") == "critical":
            run_critical(device, progress, grants)
        else:
            run_batch(device, progress, grants)
    except Exception as exc:  # the box reads it from the status file; the exit status says it failed
        progress.state["errors"].append(f"{type(exc).__name__}: {exc}")
        progress.write(grants, force=True)
        raise
    progress.write(grants, force=True)
    device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
