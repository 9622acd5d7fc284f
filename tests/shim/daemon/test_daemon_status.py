"""``flexnpu status``: where it asks, and how it prints a daemon's answer (the live path is in test_daemon_process)."""

from __future__ import annotations

from typing import Any

import pytest

from flexnpu.shim.daemon.main import main as daemon_main
from flexnpu.shim.status import base_url, main, render, table

SNAPSHOT: dict[str, Any] = {
    "url": "http://127.0.0.1:8765",
    "quota": 10,
    "oversubscription": 1.0,
    "cards": [
        {
            "uuid": "sim-910b3-0",
            "index": 0,
            "chip": 0,
            "model": "910B3",
            "aicores": 20,
            "hbm_mib": 65536,
            "health": "Healthy",
            "aicore_used": 10,
            "aicore_capacity": 10.0,
            "memory_used_mib": 40960,
            "tenants": 2,
        }
    ],
    "registrations": [
        {
            "flexnpu_id": "b",
            "entity": "batch",
            "npu": 0,
            "chip": 0,
            "aicore_alloc": 8,
            "memory_alloc": 32768,
            "priority": "low",
            "target_share": 0.8,
            "achieved_share": 0.7912,
            "wait_p99_us": 1830.0,
        },
        {
            "flexnpu_id": "a",
            "entity": "",
            "npu": 0,
            "chip": 0,
            "aicore_alloc": 2,
            "memory_alloc": 8192,
            "priority": "high",
            "target_share": 0.2,
            "achieved_share": 0.2004,
            "wait_p99_us": 95.0,
        },
    ],
}


@pytest.mark.parametrize(
    ("node", "url", "expected"),
    [
        (None, None, "http://127.0.0.1:8765"),
        ("npu-node-3", None, "http://npu-node-3:8765"),
        (None, "http://10.0.0.7:9000/", "http://10.0.0.7:9000"),
    ],
)
def test_base_url(node: str | None, url: str | None, expected: str) -> None:
    assert base_url(node, url) == expected


def test_render_shows_units_memory_shares_and_wait() -> None:
    text = render(SNAPSHOT)
    assert "2 registration(s)" in text
    card_line = next(line for line in text.splitlines() if "sim-910b3-0" in line)
    assert "10/10" in card_line and "40960/65536" in card_line
    batch = next(line for line in text.splitlines() if " batch " in line)
    assert "80.0%" in batch and "79.1%" in batch and "1.830" in batch and "low" in batch
    critical = next(line for line in text.splitlines() if " high " in line)
    assert "20.0%" in critical and "0.095" in critical


def test_table_aligns_columns() -> None:
    lines = table(["a", "bbb"], [["xxxx", "y"], ["z", "w"]]).splitlines()
    assert lines == ["a     bbb", "xxxx  y", "z     w"]


@pytest.mark.parametrize("entry", [main, daemon_main])
def test_bad_flag_is_one_line(entry: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        entry(["--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err
