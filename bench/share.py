"""``flexnpu bench share``: achieved vs target device-time share, flexnpu vs the ungated card vs the seed's ops.

Tenants registered 2:8, 3:7 and 1:2:7 units (quota 10) on one card, all saturating, each with its own kernel mix
in 0.05-5 ms. For every 1 s window the achieved share is the tenant's device time in it (the simulated device's
ground truth) over the window; the error is |achieved - target| in percentage points, max and mean over tenants
and windows. Virtual time (see ``flexnpu.bench._sim_workloads``); target <= 1 pp (DESIGN.md section 13).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from flexnpu.bench._sim_workloads import VIRTUAL_NOTE, add_sim_args, batch, sim_args_problem
from flexnpu.bench.common import add_common_args, emit, format_table
from flexnpu.errors import ConfigError
from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.core.virtual import Gating, RuntimeModel, Scenario, SimResult, Workload, run, target_shares

# (label, units and kernel mix per tenant)
SPLITS: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = (
    ("2:8", ((2, "mixed"), (8, "short"))),
    ("3:7", ((3, "long"), (7, "mixed"))),
    ("1:2:7", ((1, "short"), (2, "long"), (7, "mixed"))),
)


@dataclass(frozen=True)
class Variant:
    label: str
    gating: Gating
    grant_latency_us: int


def variants(grant_latency_us: int) -> tuple[Variant, ...]:
    return (
        Variant("ungated", "ungated", 0),
        Variant("seed ops", "ops", 0),
        Variant("flexnpu", "share", grant_latency_us),
        Variant("flexnpu, 0 us grant path", "share", 0),
    )


def split_workloads(split: tuple[tuple[int, str], ...]) -> tuple[Workload, ...]:
    return tuple(batch(f"t{i}-{units}u-{mix}", units, mix, seed=100 + i) for i, (units, mix) in enumerate(split))


def share_errors(result: SimResult, targets: dict[str, float]) -> list[float]:
    """|achieved - target| in percentage points for every tenant and full window."""
    return [
        abs(share - targets[name]) * 100 for name, tenant in result.tenants.items() for share in tenant.window_shares
    ]


def measure(
    split: tuple[tuple[int, str], ...], variant: Variant, policy: SlicePolicy, seconds: float
) -> dict[str, Any]:
    workloads = split_workloads(split)
    targets = target_shares(workloads, policy)
    result = run(
        Scenario(
            workloads,
            variant.gating,
            policy,
            RuntimeModel(variant.grant_latency_us),
            duration_us=round(seconds * 1_000_000),
        )
    )
    errors = share_errors(result, targets)
    tenants = [
        {
            "name": name,
            "target_share": targets[name],
            "achieved_share": sum(t.window_shares) / max(1, len(t.window_shares)),
            "worst_window_share": max(t.window_shares, key=lambda s: abs(s - targets[name]), default=0.0),
        }
        for name, t in result.tenants.items()
    ]
    busy = sum(t.busy_us for t in result.tenants.values()) / result.scenario.duration_us
    return {
        "variant": variant.label,
        "gating": variant.gating,
        "grant_latency_us": variant.grant_latency_us,
        "max_error_pp": max(errors, default=0.0),
        "mean_error_pp": sum(errors) / max(1, len(errors)),
        "device_busy": busy,
        "tenants": tenants,
    }


def build_table(rows: list[dict[str, Any]]) -> str:
    headers = ["split", "policy", "max err pp", "mean err pp", "card busy %", "achieved shares % (target)"]
    lines = [
        [
            r["split"],
            r["variant"],
            r["max_error_pp"],
            r["mean_error_pp"],
            r["device_busy"] * 100,
            " ".join(f"{t['achieved_share'] * 100:.1f}({t['target_share'] * 100:.0f})" for t in r["tenants"]),
        ]
        for r in rows
    ]
    return format_table(headers, lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexnpu bench share", description=__doc__.splitlines()[0])
    add_common_args(parser)
    add_sim_args(parser, seconds=10.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problem = sim_args_problem(args)
    try:
        policy = SlicePolicy(slice_us=args.slice_us)
    except ConfigError as exc:
        problem = problem or str(exc)
    if problem:
        print(f"flexnpu bench share: {problem}", file=sys.stderr)
        return 2
    rows = [
        {"split": label, **measure(split, variant, policy, args.seconds)}
        for label, split in SPLITS
        for variant in variants(args.grant_latency_us)
    ]
    result = {
        "mode": "virtual",
        "note": VIRTUAL_NOTE,
        "window_s": 1.0,
        "seconds": args.seconds,
        "slice_us": args.slice_us,
        "target_max_error_pp": 1.0,
        "runs": rows,
    }
    table = "\n".join(
        [
            f"share accuracy over 1 s windows ({VIRTUAL_NOTE})",
            build_table(rows),
            "target: max error <= 1 pp (DESIGN.md section 13)",
        ]
    )
    emit("share", result, table, args)
    return 0
