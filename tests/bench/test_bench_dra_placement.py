"""``flexnpu bench dra_placement``: the scaled openb replay, its modelled twin (``deviceplugin-model``) and, with
FLEXNPU_REALK8S=1, the real scheduler's run: a pod the extender binds is never counted as refused because no
kubelet answered its Allocate (the bench does the device plugin's handshake)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flexnpu.bench import dra_placement
from flexnpu.bench.dra_placement import BenchPod, run_model, scaled_nodes, scaled_pods, trace_pod
from flexnpu.bench.openb import load_nodes, load_pods
from flexnpu.bench.placement import NODE_FILE, POD_FILE
from flexnpu.extender.core.model import CPU_ONLY

NODES = """sn,cpu_milli,memory_mib,gpu,model
n0,64000,262144,2,T4
n1,64000,262144,2,T4
n2,8000,16384,0,
n3,96000,393216,4,V100M32
"""
PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli
p0,4000,8192,1,500
p1,2000,4096,1,500
p2,16000,32768,2,1000
p3,1000,1024,0,0
p4,4000,8192,1,500
p5,2000,4096,1,750
p6,8000,8192,1,520
p7,1000,2048,1,250
p8,1000,2048,1,100
p9,8000,8192,4,1000
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / NODE_FILE).write_text(NODES, encoding="utf-8")
    (tmp_path / POD_FILE.format("tiny")).write_text(PODS, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("pod", "units", "whole", "milli"),
    [
        (BenchPod("a", 1, 3, 1000, 64), 300, 0, 300),
        (BenchPod("b", 1, 10, 1000, 64), 1000, 0, 1000),  # one whole card asked as 10 units: a full fraction
        (BenchPod("c", 2, 10, 1000, 64), 2000, 2, 2000),
    ],
)
def test_a_replayed_pod_keeps_its_request_in_openb_units(pod: BenchPod, units: int, whole: int, milli: int) -> None:
    converted = trace_pod(pod)
    assert (converted.demand.request.units, converted.demand.request.whole_cards, converted.milli) == (
        units,
        whole,
        milli,
    )
    assert (converted.demand.cpu_milli, converted.demand.host_memory_mib) == (1000, 64)


def test_a_cpu_only_pod_stays_cpu_only() -> None:
    assert trace_pod(BenchPod("d", 0, 0, 500, 32)).demand.request == CPU_ONLY


def test_the_modelled_replay_counts_what_it_placed(data: Path) -> None:
    nodes_all = load_nodes(data / NODE_FILE)
    step, nodes = scaled_nodes(nodes_all, 10)
    capacity = dra_placement.UNITS_PER_CARD * sum(len(n.cards) for n in nodes)
    pods = scaled_pods(load_pods(data / POD_FILE.format("tiny"), nodes_all), step, capacity)
    assert step == 1 and [len(n.cards) for n in nodes] == [2, 2, 4]  # the node without cards is left out

    result = run_model(nodes, pods)

    assert result["capacity_units"] == capacity == 80 and result["pods"] == len(pods)
    assert 0 < result["allocated_units"] <= capacity
    assert result["unallocated_pct_at_100"] == pytest.approx(100 - 100 * result["allocated_units"] / capacity)
    asked = sum(p.requested_units for p in pods)
    assert asked >= capacity  # the replay stops once the requests reach the cluster
    assert result["refused"] == 0 or result["allocated_units"] < asked


def test_a_model_only_run_needs_no_harness_and_writes_its_figures(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    argv = ["--nodes", "10", "--trace", "tiny", "--data-dir", str(data), "--modes", "deviceplugin-model"]
    assert dra_placement.main([*argv, "--out", str(out)]) == 0
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert set(figures["summary"]) == {"deviceplugin-model"}
    [sample] = figures["per_sample"]
    assert sample["modes"]["deviceplugin-model"]["capacity_units"] == 80


@pytest.mark.realk8s
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_real_extender_refuses_only_what_does_not_fit(data: Path, tmp_path: Path) -> None:
    if os.environ.get("FLEXNPU_REALK8S") != "1":
        pytest.skip("runs upstream Kubernetes components: set FLEXNPU_REALK8S=1")
    out = tmp_path / "figures.json"
    argv = ["--nodes", "10", "--trace", "tiny", "--data-dir", str(data), "--modes", "deviceplugin,deviceplugin-model"]
    assert dra_placement.main([*argv, "--out", str(out)]) == 0
    [sample] = json.loads(out.read_text(encoding="utf-8"))["per_sample"]
    real = sample["modes"]["deviceplugin"]
    # Same-size pods (p0, p1, p4) on one node: each bind waits for the one before to be allocated (no kubelet
    # here: the bench answers as the device plugin would), so none is refused for it.
    assert set(real["refusals"]) <= {"Unschedulable (gpu)"}, real["refusals"]
    assert real["allocated_units"] > 0
