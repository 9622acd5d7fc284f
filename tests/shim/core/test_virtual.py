"""Virtual-time end to end: the simulated NPU, the runtime model and the scheduler together (short, seeded)."""

from __future__ import annotations

import pytest

from flexnpu.priority import Priority
from flexnpu.shim.core.slicing import SlicePolicy
from flexnpu.shim.core.virtual import RuntimeModel, Scenario, Workload, percentile, run, target_shares

TWO_EIGHT = (
    Workload("a", 2, kernel_min_us=50, kernel_max_us=5000, seed=1),
    Workload("b", 8, kernel_min_us=50, kernel_max_us=500, seed=2),
)


def max_error_pp(scenario: Scenario) -> float:
    result = run(scenario)
    targets = target_shares(scenario.workloads, scenario.policy)
    return max(abs(s - targets[n]) * 100 for n, t in result.tenants.items() for s in t.window_shares)


def test_flexnpu_beats_the_ungated_card_and_the_seed_policy_on_share_error() -> None:
    errors = {
        g: max_error_pp(Scenario(TWO_EIGHT, g, duration_us=2_000_000, runtime=RuntimeModel(30)))
        for g in ("ungated", "ops", "share")
    }
    assert errors["share"] < 1.0
    assert errors["share"] < errors["ops"] and errors["share"] < errors["ungated"]


def test_a_run_is_deterministic() -> None:
    scenario = Scenario(TWO_EIGHT, "share", duration_us=300_000)
    first, second = run(scenario), run(scenario)
    assert first.tenants == second.tenants and first.timeline == second.timeline


def test_the_high_priority_tenant_keeps_its_latency_beside_a_batch_tenant() -> None:
    critical = Workload(
        "critical", 3, Priority.HIGH, 500, 1500, "uniform", step_kernels=10, step_period_us=50_000, seed=3
    )
    batch = Workload("batch", 7, seed=4)
    p99 = {}
    for label, workloads, gating in (
        ("solo", (critical,), "ungated"),
        ("ungated", (critical, batch), "ungated"),
        ("share", (critical, batch), "share"),
    ):
        result = run(Scenario(workloads, gating, duration_us=1_500_000))  # type: ignore[arg-type]
        p99[label] = result.tenants["critical"].latency_percentile_us(99)
    assert p99["share"] < p99["ungated"]
    # At most the batch kernel running when a step arrives and the one queued behind it: the runtime model queues a
    # kernel of any length while none is queued, and past that no more than its in-flight cap (500 µs).
    assert p99["share"] <= p99["solo"] + 2 * 5000


def test_work_conservation_gives_the_idle_time_to_the_backlogged() -> None:
    workloads = (Workload("idle", 5, active=((0, 1),)), Workload("busy", 5, seed=2))
    capped = run(Scenario(workloads, "share", SlicePolicy(), duration_us=2_000_000))
    shared = run(Scenario(workloads, "share", SlicePolicy(share_in_idle=True), duration_us=2_000_000))
    assert capped.tenants["busy"].window_shares[-1] == pytest.approx(0.5, abs=0.01)
    assert shared.tenants["busy"].window_shares[-1] > 0.99


@pytest.mark.parametrize(("values", "q", "expected"), [([1, 2, 3, 4], 50, 2.0), ([5], 99, 5.0), ([3, 1, 2], 100, 3.0)])
def test_percentile_is_nearest_rank(values: list[int], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_three_tenants_1_2_7_with_mixed_kernels_stay_within_a_point() -> None:
    # The share benchmark's hardest split (long kernels beside short ones), over 5 windows with a 30 µs grant path.
    from flexnpu.bench.share import SPLITS, Variant, measure

    split = dict(SPLITS)["1:2:7"]
    figures = measure(split, Variant("flexnpu", "share", 30), SlicePolicy(), seconds=5.0)
    assert figures["max_error_pp"] <= 1.0
    assert figures["device_busy"] > 0.99
