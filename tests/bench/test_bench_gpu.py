"""The prepared GPU benchmark (``flexnpu bench gpu``): it refuses to measure without a CUDA GPU, and its CPU dry run
goes through every scenario, so that a session that is lent a GPU does not spend its device time on a broken
script. The dry run's figures measure nothing (torch's CPU device is not gated); only their shape is checked."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from flexnpu.cli import main; sys.exit(main())", "bench", "gpu", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    return subprocess.run(probe, capture_output=True, text=True, timeout=300, check=False).stdout.strip() == "True"


def test_without_a_cuda_gpu_it_exits_2_and_says_why(tmp_path: Path) -> None:
    if cuda_available():
        pytest.skip("this machine has a CUDA GPU: the benchmark would run")
    out = tmp_path / "gpu.json"
    result = bench("--out", str(out), timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs a CUDA GPU" in result.stderr
    assert ("no torch" in result.stderr) != HAS_TORCH
    assert not out.exists()  # no figures from a run that measured nothing


@pytest.mark.skipif(not HAS_TORCH, reason="the dry run's tenants need torch (CPU build)")
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None, reason="needs cc and make")
# Its work is sixteen tenant processes that each import torch, and a build: about 60 s on an idle 2-core machine,
# well past the suite's 120 s default when that machine is busy.
@pytest.mark.timeout(600)
def test_the_cpu_dry_run_goes_through_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = bench("--cpu-dry-run", "--seconds", "2", "--steps", "3", "--out", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["gpu"].startswith("CPU DRY RUN")
    assert figures["solo_tflops"] > 0
    assert [r["variant"] for r in figures["share_2_8"]] == ["flexnpu", "ungated"]
    for row in figures["share_2_8"]:
        assert set(row["achieved"]) == {"t-2u", "t-8u"}
        assert sum(row["achieved"].values()) == pytest.approx(1.0)
    steps = {r["variant"]: r for r in figures["critical_short_steps"]}
    assert set(steps) == {"solo", "flexnpu", "ungated"}
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in steps.values())
    assert steps["solo"]["p99_over_solo"] == 1.0
    memory = figures["memory"]
    assert memory["cap_bytes"] == 4096 << 20
    # 4 processes x 4 threads x the dry run's 16 blocks of 64 MiB each (CPU memory: nothing caps it)
    assert memory["held_bytes_all_processes"] == 4 * 4 * 16 * (64 << 20)
    assert figures["overhead"]["tflops_flexnpu"] > 0 and figures["overhead"]["tflops_ungated"] > 0
    assert "2:8" in result.stdout and "critical steps" in result.stdout
