"""The openb replay's accounting on a tiny synthetic trace (the real files are for the benchmark only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexnpu.bench import placement as bench
from flexnpu.extender.core.placement import POLICIES

NODES = """sn,cpu_milli,memory_mib,gpu,model
a,2000,1024,2,T4
b,20000,1024,2,T4
c,50000,1024,0,
"""
POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,"
POD_HEADER += "scheduled_time\n"
# Four whole-card pods that need 2000m CPU each (node a can feed only one of them) and a CPU-only pod that fits
# only on b or c: three cards of four can ever be allocated.
PODS = POD_HEADER + "".join(f"p{i},2000,1,1,1000,,LS,Running,0,1,0\n" for i in range(4))
PODS += "q,7000,1,0,0,,LS,Running,0,1,0\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / bench.NODE_FILE).write_text(NODES, encoding="utf-8")
    (tmp_path / bench.POD_FILE.format("tiny")).write_text(PODS, encoding="utf-8")
    return tmp_path


def test_arrivals_are_a_shuffle_then_copies_up_to_130_percent(data_dir: Path) -> None:
    trace = bench.load_trace(data_dir, "tiny")
    assert [len(n.cards) for n in trace.nodes] == [2, 2, 0]
    assert trace.capacity_milli == 4000
    order = bench.arrival_order(trace.pods, trace.capacity_milli, seed=7)
    assert sorted(map(id, order[:5])) == sorted(map(id, trace.pods))
    requested = [p.milli for p in order]
    assert sum(requested) >= 1.3 * 4000 > sum(requested[:-1])


@pytest.mark.parametrize("name", [*sorted(POLICIES), *bench.EXTRA_POLICIES])
def test_replay_counts_arrived_and_allocated(data_dir: Path, name: str) -> None:
    trace = bench.load_trace(data_dir, "tiny")
    order = bench.arrival_order(trace.pods, trace.capacity_milli, seed=42)
    stats = bench.trace_stats(trace.pods, name)
    result = bench.replay(trace.nodes, order, name, stats, seed=42)
    assert result.arrived_milli == sum(p.milli for p in order)
    assert result.allocated_milli == 3000
    assert result.unallocated_pct == {100: 25.0, 130: 25.0}
    assert result.pods == len(order)
    whole_card_pods = sum(1 for p in order if p.milli)
    assert result.failed >= whole_card_pods - 3


def test_main_prints_medians_and_per_seed_values(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench.main(
        [
            "--trace",
            "tiny",
            "--data-dir",
            str(data_dir),
            "--seeds",
            "42,43",
            "--workers",
            "1",
            "--policies",
            "default,fgd-all",
            "--paths",
            "core",
            "--json",
            "--out",
            str(tmp_path / "out.json"),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["policies"]["default"]["unallocated_pct_at_100"] == 25.0
    assert printed["policies"]["fgd-all"]["unallocated_pct_at_130"] == 25.0
    assert set(printed["policies"]["default"]["per_seed"]) == {"42", "43"}
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["trace"] == "tiny"


@pytest.mark.parametrize("argv", [["--policies", "worstfit"], ["--seeds", "x"], ["--trace", "missing"]])
def test_bad_options_exit_non_zero_with_one_line(
    data_dir: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main([*argv, "--data-dir", str(data_dir), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flexnpu bench placement: ") and "\n" not in err
