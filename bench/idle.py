"""``flexnpu bench idle``: work conservation, the batch tenant's throughput while the critical one idles.

A high-priority tenant (3 units) runs steps of 10 kernels of 0.5-1.5 ms every 40 ms for 300 ms, then idles
for 700 ms, once per virtual second (``--seconds``); a batch tenant (7 units, kernels of 0.05-5 ms) saturates
the card. Figures: the batch tenant's device time during the idle phases as % of its device time alone
(solo), the same over the first 10 ms of each idle phase, and the ramp: the time from the critical tenant's
last kernel until the batch tenant holds >= 95% of the card in every following 1 ms bin of that phase's first
50 ms (worst phase). ``share_in_idle=true`` is the work-conserving policy; ``false`` (hard cap) and the seed's
``ops`` are shown beside it. Virtual time; target >= 95% of solo within 10 ms (DESIGN.md section 13).
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
from flexnpu.shim.core.virtual import Gating, RuntimeModel, Scenario, SimResult, Workload, run

CRITICAL, BATCH = "critical", "batch"
ACTIVE_US, IDLE_US = 300_000, 700_000
CYCLE_US = ACTIVE_US + IDLE_US
BIN_US, RAMP_LOOK_US, FIRST_US, UTIL = 1000, 50_000, 10_000, 0.95


def active_phases(cycles: int) -> tuple[tuple[int, int], ...]:
    return tuple((i * CYCLE_US, i * CYCLE_US + ACTIVE_US) for i in range(cycles))


def critical(cycles: int) -> Workload:
    return Workload(
        CRITICAL,
        3,
        Priority.HIGH,
        500,
        1500,
        "uniform",
        depth=8,
        step_kernels=10,
        step_period_us=40_000,
        active=active_phases(cycles),
        seed=5,
    )


@dataclass(frozen=True)
class Variant:
    label: str
    gating: Gating
    share_in_idle: bool


VARIANTS = (
    Variant("ungated", "ungated", False),
    Variant("seed ops", "ops", False),
    Variant("flexnpu share_in_idle=false", "share", False),
    Variant("flexnpu share_in_idle=true", "share", True),
)


def idle_phases(result: SimResult, cycles: int) -> list[tuple[int, int]]:
    """(start, end) of every idle phase: from the critical tenant's last kernel to the next active phase."""
    kernels = [k for k in result.timeline if k.client == CRITICAL]
    phases = []
    for start, stop in active_phases(cycles):
        last = max((k.finished_us for k in kernels if start <= k.started_us < stop + IDLE_US), default=stop)
        phases.append((max(last, stop), start + CYCLE_US))
    return phases


def ramp_us(result: SimResult, start: int) -> int:
    """Time from ``start`` to the end of the last 1 ms bin under 95% batch utilisation in the next 50 ms."""
    low = [
        i
        for i in range(RAMP_LOOK_US // BIN_US)
        if result.busy_between(BATCH, start + i * BIN_US, start + (i + 1) * BIN_US) < UTIL * BIN_US
    ]
    return (max(low) + 1) * BIN_US if low else 0


def measure(variant: Variant, args: argparse.Namespace, solo_rate: float) -> dict[str, Any]:
    policy = SlicePolicy(slice_us=args.slice_us, share_in_idle=variant.share_in_idle)
    cycles = cycles_of(args)
    result = run(
        Scenario(
            (critical(cycles), batch(BATCH, 7, "mixed", seed=11)),
            variant.gating,
            policy,
            RuntimeModel(args.grant_latency_us),
            duration_us=cycles * CYCLE_US,
        )
    )
    phases = idle_phases(result, cycles)
    idle_busy = sum(result.busy_between(BATCH, a, b) for a, b in phases) / sum(b - a for a, b in phases)
    first = sum(result.busy_between(BATCH, a, a + FIRST_US) for a, _ in phases) / (FIRST_US * len(phases))
    return {
        "variant": variant.label,
        "gating": variant.gating,
        "share_in_idle": variant.share_in_idle,
        "idle_throughput_pct_of_solo": 100 * idle_busy / solo_rate,
        "first_10ms_pct_of_solo": 100 * first / solo_rate,
        "ramp_ms_worst": max(ramp_us(result, a) for a, _ in phases) / 1000,
    }


def solo_rate(args: argparse.Namespace) -> float:
    """The batch tenant's device time per second alone on the card (ungated)."""
    duration = cycles_of(args) * CYCLE_US
    result = run(Scenario((batch(BATCH, 7, "mixed", seed=11),), "ungated", duration_us=duration))
    return result.tenants[BATCH].busy_us / duration


def cycles_of(args: argparse.Namespace) -> int:
    """One active + idle cycle per virtual second."""
    seconds: float = args.seconds
    return max(1, round(seconds * 1e6 / CYCLE_US))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench idle", description=__doc__.splitlines()[0])
    add_common_args(parser)
    add_sim_args(parser, seconds=10.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problem = sim_args_problem(args)
    try:
        SlicePolicy(slice_us=args.slice_us)
    except ConfigError as exc:
        problem = problem or str(exc)
    if problem:
        print(f"flexnpu bench idle: {problem}", file=sys.stderr)
        return 2
    solo = solo_rate(args)
    rows = [measure(v, args, solo) for v in VARIANTS]
    table = format_table(
        ["policy", "idle-phase throughput % of solo", "first 10 ms % of solo", "ramp ms (worst)"],
        [
            [r["variant"], r["idle_throughput_pct_of_solo"], r["first_10ms_pct_of_solo"], r["ramp_ms_worst"]]
            for r in rows
        ],
    )
    result = {
        "mode": "virtual",
        "note": VIRTUAL_NOTE,
        "slice_us": args.slice_us,
        "grant_latency_us": args.grant_latency_us,
        "solo_busy_fraction": solo,
        "target_pct_of_solo": 95.0,
        "target_ramp_ms": 10.0,
        "runs": rows,
    }
    emit(
        "idle",
        result,
        "\n".join(
            [
                f"work conservation while the critical tenant idles ({VIRTUAL_NOTE})",
                table,
                "target: >= 95% of solo within 10 ms (DESIGN.md section 13)",
            ]
        ),
        args,
    )
    return 0
