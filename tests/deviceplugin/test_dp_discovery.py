"""Discovery backends: inventory files (and their errors), a fake /dev, an npu-smi command."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from flexnpu.cards import Health
from flexnpu.discovery import DevScanner, DiscoveryError, InventoryFileScanner, NpuSmiScanner

DATA = Path(__file__).resolve().parent / "data"


def test_inventory_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "cards:\n  - {index: 1, model: 910B4, bus_id: '0000:C1:00.0'}\n"
        "  - {index: 0, model: 910B1, uuid: card-x, health: Unhealthy}\n"
    )
    cards = InventoryFileScanner(tmp_path / "a.yaml").scan()
    assert [(c.uuid, c.model, c.hbm_mib, c.aicores, c.health) for c in cards] == [
        ("npu-0000-c1-00-0", "910B4", 32768, 20, Health.HEALTHY),
        ("card-x", "910B1", 65536, 24, Health.UNHEALTHY),
    ]
    (tmp_path / "b.json").write_text('[{"index": 0, "model": "910B3"}]')
    assert [c.uuid for c in InventoryFileScanner(tmp_path / "b.json").scan()] == ["npu-0"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("cards: []", "lists no card"),
        ("cards: {index: 0}", "cards"),
        ("cards:\n  - {index: 0}", "cards[0].model"),
        ("cards:\n  - {index: 0, model: 310P3}", "unknown card model"),
        ("cards:\n  - {index: -1, model: 910B3}", "cards[0].index"),
        ("cards:\n  - {index: 0, model: 910B3, health: Sick}", "cards[0].health"),
        ("cards:\n  - {index: 0, model: 910B3}\n  - {index: 0, model: 910B3, uuid: b}", "index/chip"),
        ("cards:\n  - {index: 0, model: 910B3, uuid: 'has space'}", "device_id"),
        ("cards: [unclosed", "not valid JSON/YAML"),
    ],
)
def test_malformed_inventory_names_file_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(content)
    with pytest.raises(DiscoveryError, match=r"inventory file .*inventory\.yaml") as err:
        InventoryFileScanner(path).scan()
    assert message in str(err.value)


def test_missing_inventory_file(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="No such file"):
        InventoryFileScanner(tmp_path / "absent.yaml").scan()


def test_dev_scan_of_a_fake_dev(tmp_path: Path) -> None:
    for name in ("davinci0", "davinci3", "davinci_manager", "devmm_svm", "hisi_hdc", "null"):
        (tmp_path / name).touch()
    cards = DevScanner(tmp_path, "910B3").scan()
    assert [(c.index, c.uuid, c.model) for c in cards] == [(0, "npu-davinci0", "910B3"), (3, "npu-davinci3", "910B3")]
    (tmp_path / "davinci0").unlink()
    (tmp_path / "davinci3").unlink()
    with pytest.raises(DiscoveryError, match="no davinci"):
        DevScanner(tmp_path, "910B3").scan()


def fake_npu_smi(tmp_path: Path, output: str, code: int = 0) -> str:
    (tmp_path / "out.txt").write_text(output)
    script = tmp_path / "npu-smi"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(tmp_path / 'out.txt')!r}).read())\n"
        f"sys.exit({code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{script} info"


def test_npu_smi_command(tmp_path: Path) -> None:
    output = (DATA / "info-8x910B3-25.2-with-processes.txt").read_text()
    cards = NpuSmiScanner(fake_npu_smi(tmp_path, output)).scan()
    assert len(cards) == 8 and cards[2].bus_id == "0000:81:00.0"


@pytest.mark.parametrize(
    ("output", "code", "message"),
    [
        ("| garbled |\n", 0, "line 1"),
        ("", 0, "no NPU rows"),
        ("dcmi module initialize failed\n", 3, "exited 3: dcmi module initialize failed"),
    ],
)
def test_npu_smi_failures_are_errors(tmp_path: Path, output: str, code: int, message: str) -> None:
    with pytest.raises(DiscoveryError, match="npu-smi command") as err:
        NpuSmiScanner(fake_npu_smi(tmp_path, output, code)).scan()
    assert message in str(err.value)


def test_npu_smi_command_not_found(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="failed"):
        NpuSmiScanner(str(tmp_path / "no-such-npu-smi")).scan()
