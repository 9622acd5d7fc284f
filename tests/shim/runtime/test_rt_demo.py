"""``flexnpu demo``: the whole simulated node as real processes, on a very short run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flexnpu.shim import demo

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


def test_demo_json_shape_and_cleanup(tmp_path: Path) -> None:
    plot = tmp_path / "shares.png"
    result = subprocess.run(
        [sys.executable, "-m", "flexnpu.cli", "demo", "--json", "--seconds", "2", "--plot", str(plot)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    tenants = {t["name"]: t for t in report["tenants"]}
    assert set(tenants) == {"batch-2", "batch-8", "critical"}
    assert set(tenants["batch-2"]) >= BATCH_KEYS
    assert set(tenants["batch-8"]) >= BATCH_KEYS
    assert set(tenants["critical"]) >= CRITICAL_KEYS
    for tenant in tenants.values():
        assert 0.0 <= tenant["achieved_share"] <= 1.0
        assert 0.0 <= tenant["target_share"] <= 1.0
        assert tenant["throughput"] > 0
    assert report["oversubscribed"] is True
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert demo_processes_alive() == []


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
