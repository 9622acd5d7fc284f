"""The benchmarks on the real control plane (operator_real, deviceplugin_real) run end to end at a tiny size and
write well-formed figures: every claim and every Allocate counted, p50 <= p99, nothing left running.

They start upstream etcd, kube-apiserver, ... from the realk8s binary (tests/realk8s/build.sh), about a minute
each, so they run only with FLEXNPU_REALK8S=1 (then a missing binary is a failure, as in tests/realk8s). No
timing is asserted: the figures are the benchmarks' to report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from flexnpu.bench import deviceplugin_real, operator_real, scheduler
from flexnpu.bench._realk8s import harness

pytestmark = [pytest.mark.realk8s, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short work directory (kubelet and the plugins put unix sockets in it), checked for leftovers after."""
    if os.environ.get("FLEXNPU_REALK8S") != "1":
        pytest.skip("runs upstream Kubernetes components: set FLEXNPU_REALK8S=1")
    try:
        harness("test")  # the harness of the checkout and its binary, or why not
    except SystemExit as exc:
        pytest.fail(str(exc))
    path: Path = tmp_path_factory.mktemp("rbench", numbered=True)
    return path


def leftover_processes(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def run_bench(main: Any, work: Path, *flags: str) -> dict[str, Any]:
    out = work / "figures.json"
    code = main([*flags, "--workdir", str(work / "cluster"), "--out", str(out)])
    assert not leftover_processes(str(work / "cluster")), "the benchmark left processes running"
    figures: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0, figures
    return figures


def test_operator_real_counts_every_claim(work: Path) -> None:
    figures = run_bench(operator_real.main, work, "--claims", "12", "--nodes", "2", "--threads", "2")
    assert figures["benchmark"] == "operator_real"
    assert figures["claims"] == figures["registered"] == figures["held_by_daemons"] == 12
    assert figures["daemon_processes"] == figures["nodes"] == 2
    assert 0 < figures["latency_p50_s"] <= figures["latency_p99_s"] <= figures["latency_max_s"]
    assert figures["claims_per_second"] > 0
    assert figures["cpu_ms_per_claim"]["operator"] > 0 and figures["cpu_ms_per_claim"]["kube-apiserver"] > 0


def test_deviceplugin_real_counts_every_allocate(work: Path) -> None:
    figures = run_bench(deviceplugin_real.main, work, "--pods", "4", "--batch", "2", "--warmup", "2")
    assert figures["benchmark"] == "deviceplugin_real"
    assert set(figures["modes"]) == {"direct", "extender"}
    for mode in figures["modes"].values():
        for meter in (mode, mode["plugin_side"]):
            assert meter["allocates"] == mode["pods"] == 4
            assert 0 < meter["p50_ms"] <= meter["p99_ms"]
            bounds = [meter["p50_bucket_le_ms"], meter["p99_bucket_le_ms"]]  # None: past the largest bucket
            finite = [math.inf if b is None else b for b in bounds]
            assert meter["p99_ms"] <= finite[1] and finite[0] <= finite[1]
            assert meter["buckets_ms"][-1][1] + meter["over_largest_bucket"] == 4


def test_scheduler_binds_every_pod_with_and_without_the_extender(work: Path) -> None:
    out = work / "figures.json"
    code = scheduler.main(["--nodes", "12", "--pods", "16", "--threads", "2", "--out", str(out)])
    assert not leftover_processes("bench-scheduler-"), "the benchmark left processes running"
    figures: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0, figures
    for mode in ("plain", "extender"):
        assert figures[mode]["pods"] == 16
        assert 0 <= figures[mode]["p50_ms"] <= figures[mode]["p99_ms"]
        assert figures[mode]["cpu_ms_per_pod"]["kube-apiserver"] > 0
    # every extender pod went through the extender's filter and was bound by it (a retried pod is filtered again)
    assert figures["calls"]["bind bound"] == 16 <= figures["calls"]["filter 200"]
    assert figures["ratio"] == figures["extender"]["pods_per_s"] / figures["plain"]["pods_per_s"]
