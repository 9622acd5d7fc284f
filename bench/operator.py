"""``flexnpu bench operator``: how fast the operator turns VNpuClaims into registrations (DESIGN.md section 13).

Setup, all on this machine: the kmock Kubernetes API emulator (in this process), the operator (kopf, in this
process, as in production one process per replica), and one real flexnpud process per simulated node (10 by
default, each with eight simulated 910B3 cards and oversubscription 2 so that 100 one-unit claims fit on a node).
Claims are created through the API like ``kubectl apply`` would, spread round-robin over nodes and cards, either
all at once (``--rate 0``, a burst) or paced at ``--rate`` claims per second. The emulator timestamps the first
status write that says Registered, so the latency is create-to-Registered as the API server sees it.

Figures: claims registered per second (claims / time from the first create to the last Registered) and the
create-to-Registered p50 / p99 / max (target p99 <= 1 s, DESIGN.md section 13).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from flexnpu import names
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.operator.settings import OperatorSettings
from flexnpu_testsupport.operatorkit import (
    DaemonProcess,
    claim,
    create,
    daemon_pod,
    delete,
    kubernetes,
    patch_claim,
    read_claim,
    running_operator,
)

NAME = "operator"
CARDS_PER_NODE = 8
TARGET_P99_S = 1.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexnpu bench operator", description=__doc__.splitlines()[0])
    p.add_argument("--claims", type=int, default=1000, help="claims to create (default 1000)")
    p.add_argument("--nodes", type=int, default=10, help="simulated nodes, one flexnpud process each (default 10)")
    p.add_argument("--rate", type=float, default=0.0, help="claims created per second; 0: all at once (default)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument("--quick", action="store_true", help="100 claims on 2 nodes")
    add_common_args(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.claims, args.nodes = 100, 2
    if args.claims < 1 or args.nodes < 1 or args.rate < 0:
        print("flexnpu bench operator: --claims and --nodes must be >= 1, --rate >= 0", flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kopf").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.access").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="flexnpu-bench-operator-") as workdir:
        result = asyncio.run(run(args, Path(workdir)))
    emit(NAME, result, table(result), args)
    return 0 if result["registered"] == result["claims"] else 1


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = OperatorSettings(metrics_port=0, resync_interval=60.0)
    daemons = [DaemonProcess(node=f"node-{i:02d}", workdir=workdir, oversubscription=2.0) for i in range(args.nodes)]
    created: dict[str, float] = {}
    registered: dict[str, float] = {}
    try:
        await asyncio.gather(*(d.start() for d in daemons))
        async with kubernetes() as kube:
            kube.observer = lambda request: _observe(request, registered)
            for daemon in daemons:
                await create(kube, daemon_pod(daemon.node, daemon.port, settings))
            async with running_operator(settings, str(kube.url)):
                await _warm_up(kube, daemons[0], registered)
                started = time.monotonic()
                await _create_claims(kube, args, daemons, created)
                await _wait_all(registered, args.claims, args.timeout)
                finished = time.monotonic()
        held = sum([len(await d.registrations()) for d in daemons])
    finally:
        await asyncio.gather(*(d.stop() for d in daemons))
    return _figures(args, created, registered, started, finished, held)


def _observe(request: Any, registered: dict[str, float]) -> None:
    """Timestamp the first status write of each claim that says Registered."""
    if request.subresource != "status" or request.resource.plural != names.CRD_PLURAL:
        return
    if isinstance(request.data, dict) and (request.data.get("status") or {}).get("phase") == "Registered":
        registered.setdefault(str(request.name), time.monotonic())


async def _warm_up(kube: Any, daemon: DaemonProcess, registered: dict[str, float]) -> None:
    """kopf reports ready before its watch streams run: one probe claim proves the operator is watching."""
    await create(kube, claim("warm-up", daemon.node, npu=0, aicore=1, memory=0))
    # The emulator replays existing objects when a watch starts, so kopf may see the probe twice and lose its
    # first finalizer patch to the conflict (until the 60 s resync). A touch gives it a fresh event instead.
    for touch in range(120):
        await _wait_all(registered, 1, 1.0)
        if registered:
            break
        await patch_claim(kube, "default", "warm-up", {"metadata": {"labels": {"bench-touch": str(touch)}}})
    await delete(kube, names.CRD_KIND, "default", "warm-up")
    while read_claim(kube, "default", "warm-up") is not None:
        await asyncio.sleep(0.05)
    registered.clear()


async def _create_claims(
    kube: Any, args: argparse.Namespace, daemons: list[DaemonProcess], created: dict[str, float]
) -> None:
    start = time.monotonic()
    for i in range(args.claims):
        if args.rate > 0:
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        name = f"claim-{i:05d}"
        node = daemons[i % len(daemons)].node
        body = claim(name, node, npu=(i // len(daemons)) % CARDS_PER_NODE, aicore=1, memory=512)
        created[name] = time.monotonic()
        await create(kube, body)


async def _wait_all(registered: dict[str, float], expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(registered) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _figures(
    args: argparse.Namespace,
    created: dict[str, float],
    registered: dict[str, float],
    started: float,
    finished: float,
    held: int,
) -> dict[str, Any]:
    latencies = sorted(registered[n] - created[n] for n in registered if n in created)
    last = max(registered.values(), default=finished)
    span = max(last - started, 1e-9)
    return {
        "claims": args.claims,
        "nodes": args.nodes,
        "daemon_processes": args.nodes,
        "rate": args.rate or "burst",
        "registered": len(registered),
        "held_by_daemons": held,
        "seconds": round(span, 3),
        "claims_per_second": round(len(registered) / span, 1),
        "latency_p50_s": round(_quantile(latencies, 0.50), 3),
        "latency_p99_s": round(_quantile(latencies, 0.99), 3),
        "latency_max_s": round(latencies[-1] if latencies else 0.0, 3),
        "latency_mean_s": round(statistics.fmean(latencies) if latencies else 0.0, 3),
        "target_p99_s": TARGET_P99_S,
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def table(result: dict[str, Any]) -> str:
    rows: list[list[object]] = [
        [
            "claims / nodes (flexnpud processes)",
            f"{result['claims']} / {result['nodes']} ({result['daemon_processes']})",
        ],
        ["creation", f"{result['rate']} claims/s" if result["rate"] != "burst" else "burst (all at once)"],
        ["registered (held by daemons)", f"{result['registered']} ({result['held_by_daemons']})"],
        ["claims registered per second", result["claims_per_second"]],
        ["create-to-Registered p50 (s)", result["latency_p50_s"]],
        [f"create-to-Registered p99 (s) [target <= {TARGET_P99_S:g}]", result["latency_p99_s"]],
        ["create-to-Registered max (s)", result["latency_max_s"]],
    ]
    return format_table(["operator benchmark", "value"], rows)
