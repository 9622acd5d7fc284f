"""The benchmark runs end to end at a tiny size and writes its figures (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from flexnpu.bench import deviceplugin


def test_bench_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "dp.json"
    assert deviceplugin.main(["--allocates", "5", "--restarts", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["allocate"]["ids_only_ms"]["n"] == 5
    assert result["allocate"]["with_api_ms"]["n"] == 5
    assert result["reregistration_s"]["to_register"]["n"] == 1
    assert set(result["meets_targets"]) == {"allocate_p99", "reregistration"}
