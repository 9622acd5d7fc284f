"""Workloads and helpers shared by the virtual-time benchmarks ``share``, ``priority`` and ``idle``.

All three run ``flexnpu.shim.core.virtual``: the simulated NPU and the slice scheduler in one process, in virtual
time (deterministic, seeded), so their figures say what the policy achieves, not how noisy this machine is. The
real-time path (separate processes, the real grant socket) is measured by ``overhead`` and ``grant``.

Kernel mixes, all inside DESIGN.md's 0.05-5 ms: each tenant of a run gets a different mix, because a policy that
counts operators (the seed's ``ops``) is only wrong when operator lengths differ between tenants.
"""

from __future__ import annotations

import argparse

from flexnpu.priority import Priority
from flexnpu.shim.core.virtual import KernelMix, Workload

VIRTUAL_NOTE = "virtual time: simulated NPU + slice scheduler as a discrete-event run (deterministic, seeded)"

# name: (min_us, max_us, distribution)
KERNEL_MIXES: dict[str, tuple[int, int, KernelMix]] = {
    "mixed": (50, 5000, "loguniform"),
    "short": (50, 500, "loguniform"),
    "long": (500, 5000, "uniform"),
}


def batch(
    name: str,
    units: int,
    mix: str,
    seed: int,
    priority: Priority = Priority.NORMAL,
    active: tuple[tuple[int, int], ...] = (),
) -> Workload:
    """A saturating batch tenant: always has kernels to launch, launch queue 8 deep."""
    low, high, dist = KERNEL_MIXES[mix]
    return Workload(name, units, priority, low, high, dist, depth=8, active=active, seed=seed)


def add_sim_args(parser: argparse.ArgumentParser, seconds: float) -> None:
    parser.add_argument("--seconds", type=float, default=seconds, help=f"virtual seconds per run (default {seconds})")
    parser.add_argument(
        "--grant-latency-us",
        type=int,
        default=30,
        help="one-way runtime<->daemon message latency in the model (default 30, the measured "
        "unix-socket p99 on the 2-core CI machine)",
    )
    parser.add_argument("--slice-us", type=int, default=2000, help="schedule_cycle (default 2000)")


def sim_args_problem(args: argparse.Namespace) -> str | None:
    """One line naming what is wrong with the common simulation flags, or None."""
    if not 0.01 <= args.seconds <= 600:
        return f"--seconds={args.seconds}: must be from 0.01 to 600"
    if not 0 <= args.grant_latency_us <= 100_000:
        return f"--grant-latency-us={args.grant_latency_us}: must be from 0 to 100000"
    if not 50 <= args.slice_us <= 1_000_000:
        return f"--slice-us={args.slice_us}: must be from 50 to 1000000"
    return None
