"""``flexnpu bench overhead``: one tenant gated vs ungated on the real-time simulated NPU (REAL TIME).

A single tenant process keeps the simulated 910B3 busy with kernels of mixed lengths (0.05-5 ms), launched
asynchronously with the same bounded run-ahead in every mode. Its throughput is the device time it gets per wall
second, read from the simulated NPU's ground truth. Modes: ungated (the card natively), flexnpu (``share`` policy,
the tenant registered for the whole card, through the real flexnpud and grant socket), and the seed's ``ops``
policy (aicore_alloc operators per ticker round). Target (DESIGN.md section 13): gated >= 98% of ungated.

Real time on a shared 2-core machine: figures move by a few percent between runs; the virtual-time benchmarks
(``share``, ``priority``) are the deterministic ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexnpu import names
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.shim.simnpu.node import (
    NodeConfig,
    register,
    simulated_node,
    start_worker,
    tenant_env,
    wait_until,
    wait_worker,
)

KERNELS_US = (50, 100, 250, 500, 1000, 2000, 5000)
RUN_AHEAD_US = 2000.0
STARTUP_S = 2.0
WARMUP_S = 0.5
TENANT = "tenant"

MODES = {
    "ungated": (NodeConfig(), False),
    "flexnpu": (NodeConfig(policy="share", share_in_idle=False), True),
    "seed ops": (NodeConfig(policy="ops", share_in_idle=False), True),
}


def worker(begin: float, until: float, out: Path) -> None:
    """The tenant: gated through the runtime sitecustomize activated, or ungated with the same run-ahead bound."""
    from flexnpu.shim.runtime.activation import active
    from flexnpu.shim.runtime.simnpu_adapter import GatedSimNpu
    from flexnpu.shim.runtime.simnpu_client import SimNpuClient

    runtime = active()
    if runtime is not None:
        device = runtime.simnpu
    else:
        sim_socket = os.environ[names.ENV_DEVICE].split(":", 1)[1]
        device = GatedSimNpu(SimNpuClient(sim_socket, name=TENANT), None)
    rng = random.Random(7)
    ahead = 0.0
    wait_until(begin)
    while time.monotonic() < until:
        kernel = rng.choice(KERNELS_US)
        device.launch(kernel)
        if runtime is None:
            ahead += kernel
            if ahead >= RUN_AHEAD_US:  # the slicer bounds run-ahead like this; ungated gets the same queue depth
                device.settle()
                device.mark()
                ahead = 0.0
    device.finish()
    slicer = device.slicer
    out.write_text(
        json.dumps({"slices": slicer.slices if slicer else 0, "drains": slicer.drains if slicer else 0}),
        encoding="utf-8",
    )


def measure(mode: str, seconds: float) -> dict[str, Any]:
    from flexnpu.shim.runtime.simnpu_client import SimNpuClient

    config, gated = MODES[mode]
    with simulated_node(config, prefix="flexnpu-bench-") as node:
        register(node, TENANT, config.quota)
        begin = time.monotonic() + STARTUP_S
        start, end = begin + WARMUP_S, begin + WARMUP_S + seconds
        out = node.workdir / "tenant.json"
        proc = start_worker(
            node,
            "flexnpu.bench.overhead",
            ["--worker", "--begin", repr(begin), "--until", repr(end), "--out-file", str(out)],
            tenant_env(node, TENANT, config.quota, gated=gated),
        )
        with SimNpuClient(node.sim_socket, name="bench-observer") as observer:
            wait_until(start)
            first = observer.stats()[TENANT]
            t0 = time.monotonic()
            wait_until(end)
            last = observer.stats()[TENANT]
            elapsed = time.monotonic() - t0
        wait_worker(proc)
        counts = json.loads(out.read_text())
    busy = (last["busy_us"] - first["busy_us"]) / 1e6
    kernels = last["kernels"] - first["kernels"]
    return {
        "mode": mode,
        "device_share": busy / elapsed,
        "kernels_per_s": kernels / elapsed,
        "grants": counts["slices"],
        "drains": counts["drains"],
        "seconds": round(elapsed, 2),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnpu bench overhead", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per mode (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 s per mode")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--begin", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out-file", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.worker:
        worker(args.begin, args.until, args.out_file)
        return 0
    seconds = 2.0 if args.quick else args.seconds
    if not 0.5 <= seconds <= 120:
        print(f"flexnpu bench overhead: --seconds={seconds}: must be in 0.5..120", file=sys.stderr)
        return 2
    rows = [measure(mode, seconds) for mode in MODES]
    native = rows[0]["device_share"]
    for row in rows:
        row["vs_ungated"] = row["device_share"] / native if native else 0.0
    table = format_table(
        ["mode", "device share", "kernels/s", "vs ungated", "grants", "drains", "seconds"],
        [
            [
                r["mode"],
                r["device_share"],
                r["kernels_per_s"],
                f"{r['vs_ungated']:.1%}",
                r["grants"],
                r["drains"],
                r["seconds"],
            ]
            for r in rows
        ],
    )
    header = (
        "overhead (REAL TIME, simulated 910B3 via flexnpu simnpu + flexnpud; one tenant, kernels 0.05-5 ms; "
        "target: flexnpu >= 98% of ungated)"
    )
    emit(
        "overhead",
        {
            "clock": "real time",
            "target": ">= 0.98 of ungated",
            "modes": rows,
            "flexnpu_vs_ungated": rows[1]["vs_ungated"],
            "seed_ops_vs_ungated": rows[2]["vs_ungated"],
        },
        header + "\n" + table,
        args,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
