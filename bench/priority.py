"""``flexnpu bench priority``: a latency-critical tenant's p99 step latency beside a saturating batch tenant.

The critical tenant (priority high, 3 units) runs inference-like steps of 32 kernels of 0.5-1.5 ms arriving as a
Poisson process (mean interval 500 ms, about 6% of the card); the batch tenant (7 units) saturates the card with
kernels of 0.05-5 ms, 8 deep in its launch queue. Figure: the critical p99 with the batch tenant over its p99
alone, for the ungated card and for flexnpu. A kernel that runs cannot be preempted, so flexnpu's floor is the
batch kernel in flight when a step arrives (up to 5 ms here); the runtime keeps at most ``inflight_cap_us`` of
not-started work queued, so nothing else stands in the way. Virtual time; target <= 1.1x (DESIGN.md section 13).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from flexnpu.bench._sim_workloads import VIRTUAL_NOTE, add_sim_args, batch, sim_args_problem
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.errors import ConfigError
from flexnpu.priority import Priority
from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.core.virtual import Gating, RuntimeModel, Scenario, Workload, run

CRITICAL = "critical"
WARMUP_US = 200_000


def critical(step_kernels: int, period_us: int) -> Workload:
    return Workload(
        CRITICAL,
        3,
        Priority.HIGH,
        500,
        1500,
        "uniform",
        depth=8,
        step_kernels=step_kernels,
        step_period_us=period_us,
        arrivals="poisson",
        seed=7,
    )


@dataclass(frozen=True)
class Variant:
    label: str
    gating: Gating
    with_batch: bool
    share_in_idle: bool = False


VARIANTS = (
    Variant("solo (ungated, alone)", "ungated", with_batch=False),
    Variant("ungated + batch", "ungated", with_batch=True),
    Variant("seed ops + batch", "ops", with_batch=True),
    Variant("flexnpu + batch (share_in_idle=false)", "share", with_batch=True),
    Variant("flexnpu + batch (share_in_idle=true)", "share", with_batch=True, share_in_idle=True),
)


def measure(variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    workloads: tuple[Workload, ...] = (critical(args.step_kernels, args.period_us),)
    if variant.with_batch:
        workloads += (batch("batch", 7, "mixed", seed=11),)
    policy = SlicePolicy(slice_us=args.slice_us, share_in_idle=variant.share_in_idle)
    runtime = RuntimeModel(args.grant_latency_us, inflight_cap_us=args.inflight_cap_us)
    result = run(
        Scenario(workloads, variant.gating, policy, runtime, duration_us=round(args.seconds * 1e6), warmup_us=WARMUP_US)
    )
    crit = result.tenants[CRITICAL]
    batch_busy = result.tenants["batch"].busy_us / result.scenario.duration_us if variant.with_batch else 0.0
    return {
        "variant": variant.label,
        "gating": variant.gating,
        "share_in_idle": variant.share_in_idle,
        "steps": len(crit.step_latencies_us),
        "p50_ms": crit.latency_percentile_us(50) / 1000,
        "p99_ms": crit.latency_percentile_us(99) / 1000,
        "batch_share": batch_busy,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench priority", description=__doc__.splitlines()[0])
    add_common_args(parser)
    add_sim_args(parser, seconds=150.0)
    parser.add_argument("--step-kernels", type=int, default=32, help="kernels per critical step (default 32)")
    parser.add_argument("--period-us", type=int, default=500_000, help="mean step interval (default 500000)")
    parser.add_argument(
        "--inflight-cap-us",
        type=int,
        default=500,
        help="the runtime's cap on not-started work queued on the device (default 500)",
    )
    return parser.parse_args(argv)


def problem_with(args: argparse.Namespace) -> str | None:
    problem = sim_args_problem(args)
    if problem is None and not 1 <= args.step_kernels <= 10_000:
        problem = f"--step-kernels={args.step_kernels}: must be from 1 to 10000"
    if problem is None and not 1000 <= args.period_us <= 10_000_000:
        problem = f"--period-us={args.period_us}: must be from 1000 to 10000000"
    if problem is None and not 0 <= args.inflight_cap_us <= 1_000_000:
        problem = f"--inflight-cap-us={args.inflight_cap_us}: must be from 0 to 1000000"
    if problem is None:
        try:
            SlicePolicy(slice_us=args.slice_us)
        except ConfigError as exc:
            problem = str(exc)
    return problem


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problem = problem_with(args)
    if problem:
        print(f"flexnpu bench priority: {problem}", file=sys.stderr)
        return 2
    rows = [measure(v, args) for v in VARIANTS]
    solo_p99 = rows[0]["p99_ms"]
    for row in rows:
        row["p99_over_solo"] = row["p99_ms"] / solo_p99
    table = format_table(
        ["run", "steps", "p50 ms", "p99 ms", "p99 / solo p99", "batch share %"],
        [
            [r["variant"], r["steps"], r["p50_ms"], r["p99_ms"], r["p99_over_solo"], r["batch_share"] * 100]
            for r in rows
        ],
    )
    result = {
        "mode": "virtual",
        "note": VIRTUAL_NOTE,
        "seconds": args.seconds,
        "slice_us": args.slice_us,
        "grant_latency_us": args.grant_latency_us,
        "inflight_cap_us": args.inflight_cap_us,
        "step_kernels": args.step_kernels,
        "period_us": args.period_us,
        "target_p99_over_solo": 1.1,
        "solo_p99_ms": solo_p99,
        "runs": rows,
    }
    emit(
        "priority",
        result,
        "\n".join(
            [
                f"critical tenant tail latency ({VIRTUAL_NOTE})",
                table,
                "target: p99 / solo p99 <= 1.1 (DESIGN.md section 13)",
            ]
        ),
        args,
    )
    return 0
