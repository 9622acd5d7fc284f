"""``flexnpu demo``: the whole simulated node as real processes, on a very short run, with either runtime.

``native``: tenant processes call the fake AscendCL through ctypes with libflexnpu.so preloaded (the install
builds both; without a C toolchain the test of that runtime is skipped and the fallback is tested instead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flexnpu.shim import demo
from flexnpu.shim.simnpu import native as fakes

BATCH_KEYS = {"name", "target_share", "achieved_share", "throughput"}
CRITICAL_KEYS = BATCH_KEYS | {"p50_ms", "p99_ms", "solo_p99_ms"}


def demo_processes_alive() -> list[str]:
    """Command lines of running processes that belong to a demo node (they all name its temp directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flexnpu-demo-" in cmdline:
            found.append(cmdline)
    return found


def run_demo_json(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", "demo", "--json", "--seconds", "2", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def native_built() -> bool:
    return None not in demo.find_native()


@pytest.mark.parametrize("runtime", ["native", "python"])
def test_demo_json_shape_and_cleanup(tmp_path: Path, runtime: str) -> None:
    if runtime == "native" and not native_built():
        pytest.skip("libflexnpu.so or the fake device libraries are not built (no C toolchain at install time)")
    plot = tmp_path / "shares.png"
    report, _ = run_demo_json(tmp_path, "--runtime", runtime, "--plot", str(plot))
    assert report["runtime"] == runtime
    tenants = {t["name"]: t for t in report["tenants"]}
    assert set(tenants) == {"batch-2", "batch-8", "critical"}
    assert set(tenants["batch-2"]) >= BATCH_KEYS
    assert set(tenants["batch-8"]) >= BATCH_KEYS
    assert set(tenants["critical"]) >= CRITICAL_KEYS
    for tenant in tenants.values():
        assert 0.0 <= tenant["achieved_share"] <= 1.0
        assert 0.0 <= tenant["target_share"] <= 1.0
        assert tenant["throughput"] > 0
    # Weights 2:8 between the batch tenants, whatever the meter (the device's own record, not the scheduler's).
    assert tenants["batch-8"]["achieved_share"] > tenants["batch-2"]["achieved_share"]
    assert report["oversubscribed"] is True
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert demo_processes_alive() == []
    if runtime == "native":
        assert "kernel log" in report["meter"]
        # flexnpud charged every tenant: their launches went through libflexnpu's gate and its event meter.
        assert all(t["daemon_charged_share"] > 0 for t in tenants.values())
        assert report["daemon_cpu_pct"] >= 0


def test_the_default_is_native_when_built_and_python_says_why_otherwise(tmp_path: Path) -> None:
    lib, fake_dir = tmp_path / "libflexnpu.so", tmp_path / "fake"
    runtime, parts, note = demo.choose_runtime(None, lib, fake_dir)
    assert (runtime, parts) == ("native", demo.NativeParts(lib, fake_dir))
    assert "libflexnpu.so" in note
    runtime, parts, note = demo.choose_runtime(None, None, fake_dir)
    assert (runtime, parts) == ("python", None)
    assert "Python runtime" in note and "libflexnpu.so" in note and "not built" in note
    runtime, parts, note = demo.choose_runtime(None, lib, None)
    assert (runtime, parts) == ("python", None) and "fake device libraries" in note
    assert demo.choose_runtime("python", lib, fake_dir)[:2] == ("python", None)
    with pytest.raises(demo.DemoError, match="--runtime native: not built"):
        demo.choose_runtime("native", None, None)


def test_the_meter_reads_device_time_per_tenant_from_the_kernel_log() -> None:
    ms = 1_000_000
    kernels = [
        fakes.Kernel(10, 0, 50 * ms),  # tenant a, 50 ms in the first window
        fakes.Kernel(20, 50 * ms, 150 * ms),  # tenant b, across the window edge
        fakes.Kernel(30, 0, 200 * ms),  # not a tenant of the demo
    ]
    series = demo.series_from_log(kernels, {10: "a", 20: "b"}, 0.0, 0.2, step_s=0.1)
    assert [p[0] for p in series.points] == [0.0, 0.1, 0.2]
    assert series.points[1][1] == {"a": 50_000.0, "b": 50_000.0}
    assert series.points[2][1] == {"a": 50_000.0, "b": 100_000.0}
    assert series.points[2][2] == {"a": 1.0, "b": 1.0}
    assert series.share("a", 0, 1) == pytest.approx(0.5)
    assert series.share("b", 1, 2) == pytest.approx(0.5)


def test_demo_rejects_bad_seconds(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", "demo", "--seconds", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--seconds" in result.stderr


def demo_result(card_busy: float, batch2: float, batch8: float) -> dict[str, Any]:
    tenants: list[dict[str, Any]] = [
        {
            "name": "batch-2",
            "units": 2,
            "priority": "normal",
            "target_share": 0.188,
            "achieved_share": batch2,
            "throughput": 180.0,
        },
        {
            "name": "batch-8",
            "units": 8,
            "priority": "normal",
            "target_share": 0.752,
            "achieved_share": batch8,
            "throughput": 720.0,
        },
        {
            "name": "critical",
            "units": 2,
            "priority": "high",
            "target_share": 0.06,
            "achieved_share": 0.06,
            "throughput": 50.0,
            "p50_ms": 5.0,
            "p99_ms": 10.0,
            "solo_p50_ms": 2.0,
            "solo_p99_ms": 4.0,
        },
    ]
    return {
        "card": "910B3 (simulated, real time)",
        "quota": 10,
        "registered_units": 12,
        "oversubscribed": True,
        "oversubscription": 1.2,
        "measured_seconds": 9.7,
        "card_busy": card_busy,
        "batch_split": demo.batch_split(tenants),
        "tenants": tenants,
    }


def test_an_idle_card_is_explained_with_the_batch_tenants_split() -> None:
    idle = demo_result(0.76, 0.14, 0.56)
    assert idle["batch_split"] == {"batch-2": 0.2, "batch-8": 0.8}
    text = demo.render(idle)
    assert "the card idled 24.0% of the time" in text
    assert "batch-2 0.200 / batch-8 0.800 (registered 2:8)" in text
    assert "idled" not in demo.render(demo_result(0.96, 0.18, 0.72))


def test_the_native_render_says_what_the_figures_are() -> None:
    result = demo_result(0.96, 0.18, 0.72)
    result.update(runtime="native", daemon_cpu_pct=1.5)
    for tenant in result["tenants"]:
        tenant["daemon_charged_share"] = 0.3
    text = demo.render(result)
    assert "libflexnpu.so preloaded" in text and "fake device's kernel log" in text
    assert "flexnpud charged" in text and "flexnpud used 1.5% of a CPU" in text
    assert "p99 10.00 ms shared vs 4.00 ms solo" in text
    assert "Python runtime" in demo.render(demo_result(0.96, 0.18, 0.72))


def test_asking_for_the_native_runtime_without_it_built_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "find_native", lambda: (None, None))
    assert demo.main(["--runtime", "native", "--seconds", "1"]) == 1
    err = capsys.readouterr().err
    assert "--runtime native: not built" in err and "make -C" in err
