"""npu-smi parsing against real outputs (copies of shared/data/npu-smi in ./data) and malformed variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexnpu.cards import Health
from flexnpu.npusmi import (
    NpuSmiError,
    parse_board_info,
    parse_chip_mapping,
    parse_npu_smi,
    parse_npu_smi_info,
    parse_npu_smi_processes,
)

DATA = Path(__file__).resolve().parent / "data"
PLAIN = "info-8x910B3-24.1.txt"
WITH_PROCESSES = "info-8x910B3-25.2-with-processes.txt"
BUS_IDS = [
    "0000:C1:00.0",
    "0000:C2:00.0",
    "0000:81:00.0",
    "0000:82:00.0",
    "0000:01:00.0",
    "0000:02:00.0",
    "0000:41:00.0",
    "0000:42:00.0",
]


def sample(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [PLAIN, WITH_PROCESSES])
def test_eight_910b3_cards_with_bus_ids_and_uuids(name: str) -> None:
    cards = parse_npu_smi_info(sample(name))
    assert [c.index for c in cards] == list(range(8))
    assert [c.bus_id for c in cards] == BUS_IDS
    assert [c.uuid for c in cards][:3] == ["npu-0000-c1-00-0", "npu-0000-c2-00-0", "npu-0000-81-00-0"]
    assert {(c.model, c.aicores, c.hbm_mib, c.chip, c.health) for c in cards} == {
        ("910B3", 20, 65536, 0, Health.HEALTHY)
    }


@pytest.mark.parametrize(
    ("name", "version", "hbm_used"),
    [
        (PLAIN, "24.1.rc1.b030", [3318, 3314, 3314, 3314, 3314, 3314, 3314, 3315]),
        (WITH_PROCESSES, "25.2.0", [3408, 3408, 41052, 3390, 3403, 3400, 3401, 3400]),
    ],
)
def test_live_readings_including_the_busy_hbm_form(name: str, version: str, hbm_used: list[int]) -> None:
    info = parse_npu_smi(sample(name))
    assert info.version == version
    assert [r.hbm_used_mib for r in info.readings] == hbm_used
    assert info.readings[0].aicore_percent == 0.0
    assert info.readings[0].health_word == "OK"


def test_processes_table() -> None:
    assert parse_npu_smi_processes(sample(PLAIN)) == []
    (process,) = parse_npu_smi_processes(sample(WITH_PROCESSES))
    assert (process.npu, process.chip, process.pid, process.name, process.memory_mib) == (2, 0, 1333928, "", 37709)


@pytest.mark.parametrize(
    ("word", "health"),
    [
        ("OK", Health.HEALTHY),
        ("Warning", Health.HEALTHY),
        ("Alarm", Health.UNHEALTHY),
        ("Critical", Health.UNHEALTHY),
        ("UNKNOWN", Health.UNHEALTHY),
    ],
)
def test_health_words(word: str, health: Health) -> None:
    text = sample(PLAIN).replace("| OK            |", f"| {word:<13} |", 1)
    cards = parse_npu_smi_info(text)
    assert cards[0].health is health
    assert all(c.healthy for c in cards[1:])


# (replace this, with that) -> the 1-based line the error must name
MALFORMED = [
    pytest.param(
        "| 0                         | 0000:C1:00.0  |",
        "| x                         | 0000:C1:00.0  |",
        8,
        id="chip-not-a-number",
    ),
    pytest.param("0000:C2:00.0  |", "bus-id-broke  |", 11, id="bad-bus-id"),
    pytest.param("3314 / 65536         |", "3314 of 65536        |", 11, id="no-hbm-usage"),
    pytest.param("| 3     910B3 ", "| 3     310P3 ", 16, id="unknown-model"),
    pytest.param(
        "+===========================+===============+====================================================+\n| 4 ",
        "garbage between rows\n| 4 ",
        18,
        id="stray-text",
    ),
]


@pytest.mark.parametrize(("old", "new", "line_no"), MALFORMED)
def test_malformed_output_names_the_line(old: str, new: str, line_no: int) -> None:
    text = sample(PLAIN)
    assert old in text
    with pytest.raises(NpuSmiError) as err:
        parse_npu_smi_info(text.replace(old, new, 1))
    assert err.value.line_no == line_no
    assert f"line {line_no}" in str(err.value)


@pytest.mark.parametrize("text", ["", "command not found\n", "+----+\n+----+\n"])
def test_no_cards_is_an_error_not_an_empty_inventory(text: str) -> None:
    with pytest.raises(NpuSmiError):
        parse_npu_smi_info(text)


def test_truncated_output_is_an_error() -> None:
    lines = sample(PLAIN).splitlines()
    with pytest.raises(NpuSmiError, match="without its chip row"):
        parse_npu_smi_info("\n".join(lines[:7]))


def test_malformed_process_row() -> None:
    text = sample(WITH_PROCESSES).replace("| 1333928       |", "| pid?          |")
    with pytest.raises(NpuSmiError, match="process row"):
        parse_npu_smi(text)


# The format of `npu-smi info -m` and the board query on a 910B node (driver 24.x).
CHIP_MAPPING = """\
        NPU ID                         Chip ID                        Chip Logic ID                  Chip Name
        0                              0                              0                              Ascend 910B3
        0                              1                              -                              Mcu
        1                              0                              1                              Ascend 910B3
        1                              1                              -                              Mcu
"""

BOARD = """\
        NPU ID                         : 0
        Product Name                   : NA
        Manufacturer                   : Huawei
        Serial Number                  : 102381234567
        Software Version               : 24.1.rc1.b030
        PCIe Bus Info                  : 0000:C1:00.0
        Chip Count                     : 1
"""


def test_chip_mapping() -> None:
    rows = parse_chip_mapping(CHIP_MAPPING)
    assert [(r.npu, r.chip, r.logic_id, r.name) for r in rows] == [
        (0, 0, 0, "Ascend 910B3"),
        (0, 1, None, "Mcu"),
        (1, 0, 1, "Ascend 910B3"),
        (1, 1, None, "Mcu"),
    ]


def test_chip_mapping_malformed_names_the_line() -> None:
    with pytest.raises(NpuSmiError) as err:
        parse_chip_mapping(CHIP_MAPPING.replace("1                              1      ", "x  1  ", 1))
    assert err.value.line_no == 5


def test_board_info() -> None:
    board = parse_board_info(BOARD)
    assert (board.npu, board.serial_number, board.bus_id) == (0, "102381234567", "0000:C1:00.0")
    assert board.fields["Product Name"] == ""


def test_board_info_malformed() -> None:
    with pytest.raises(NpuSmiError) as err:
        parse_board_info(BOARD + "no separator here\n")
    assert err.value.line_no == 8
