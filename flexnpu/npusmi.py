"""Parsing of Huawei's ``npu-smi`` text output into typed values: cards, live readings, processes, chip mapping.

npu-smi has no machine-readable mode, so discovery depends on its tables. Parsing is strict: a line that is
neither a known row nor table decoration raises NpuSmiError naming the line, so that a format change in a new
driver shows up as an error and never as a silently empty (or shrunken) inventory.

Formats handled (see shared/data/npu-smi for real samples):
- ``npu-smi info``: one block per NPU, a header row ``| 0  910B3 | OK | power temp hugepages |`` and a chip row
  ``| 0 | 0000:C1:00.0 | aicore%  mem used / total  hbm used / total |`` (a busy card prints ``41052/ 65536``),
  optionally followed by the processes table;
- ``npu-smi info -m``: the NPU ID / Chip ID / Chip Logic ID / Chip Name mapping;
- ``npu-smi info -t board -i N``: ``Key : value`` lines (serial number, PCIe bus info).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from flexnpu.cards import Card, Health, card_model
from flexnpu.errors import ValidationError
from flexnpu.units import card_uuid_from_bus_id

# npu-smi health words; Warning is a minor alarm that leaves the card usable.
_HEALTHY_WORDS = frozenset({"OK", "WARNING"})

_VERSION_ROW = re.compile(r"^npu-smi\s+\S+(\s+Version:\s+\S+)?$")
_HEADER_ROW = re.compile(r"^(?P<npu>\d+)\s+(?P<name>\S+)$")
_CHIP_ROW = re.compile(r"^(?P<chip>\d+)(\s+(?P<phy>\d+))?$")
_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
# aicore%, then memory "used / total" (absent on some models), then HBM "used / total"
_CHIP_FIGURES = re.compile(
    r"^(?P<aicore>\d+(\.\d+)?|NA|-)\s+(\d+\s*/\s*\d+\s+)?(?P<hbm_used>\d+)\s*/\s*(?P<hbm_total>\d+)$"
)
_NO_PROCESS = re.compile(r"^No running processes found in NPU (?P<npu>\d+)$")
_PROCESS_NPU = re.compile(r"^(?P<npu>\d+)\s+(?P<chip>\d+)$")
_TITLE_WORDS = ("NPU", "Chip")


class NpuSmiError(ValidationError):
    """npu-smi printed something this parser does not understand; the message names the line."""

    def __init__(self, line_no: int, line: str, reason: str) -> None:
        self.line_no = line_no
        self.line = line
        super().__init__(f"npu-smi output line {line_no}", line.strip(), reason)


@dataclass(frozen=True)
class CardReading:
    """One chip as ``npu-smi info`` shows it: the card and its live figures."""

    card: Card
    hbm_used_mib: int
    aicore_percent: float | None
    power_w: float | None
    temperature_c: int | None
    health_word: str


@dataclass(frozen=True)
class NpuProcess:
    """A process holding device memory, from the processes table of ``npu-smi info``."""

    npu: int
    chip: int
    pid: int
    name: str
    memory_mib: int


@dataclass(frozen=True)
class NpuSmiInfo:
    """Everything ``npu-smi info`` printed."""

    version: str
    readings: tuple[CardReading, ...]
    processes: tuple[NpuProcess, ...]

    @property
    def cards(self) -> list[Card]:
        return [r.card for r in self.readings]


@dataclass(frozen=True)
class ChipMapping:
    """One row of ``npu-smi info -m``; ``logic_id`` is None for non-compute chips (the MCU)."""

    npu: int
    chip: int
    logic_id: int | None
    name: str


def parse_npu_smi_info(text: str) -> list[Card]:
    """The cards (one per NPU chip) listed by ``npu-smi info``; NpuSmiError when the output is not understood."""
    return parse_npu_smi(text).cards


def parse_npu_smi(text: str) -> NpuSmiInfo:
    """Cards, live readings and processes from ``npu-smi info``."""
    version = ""
    readings: list[CardReading] = []
    processes: list[NpuProcess] = []
    header: _Header | None = None
    in_processes = False
    for line_no, line, cells in _table_rows(text):
        if len(cells) == 1 and _VERSION_ROW.match(cells[0]):
            version = cells[0].split()[1]
        elif _is_title(cells):
            in_processes = in_processes or any("Process" in c for c in cells)
        elif in_processes:
            processes.extend(_process_row(line_no, line, cells))
        elif header is None:
            header = _header_row(line_no, line, cells)
        else:
            readings.append(_chip_row(line_no, line, cells, header))
            header = None
    if header is not None:
        raise NpuSmiError(header.line_no, header.line, "NPU row without its chip row")
    if not readings:
        raise NpuSmiError(1, text.splitlines()[0] if text.strip() else "", "no NPU rows found in npu-smi output")
    return NpuSmiInfo(version=version, readings=tuple(readings), processes=tuple(processes))


def _table_rows(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, line, cells) of every content row; decoration and blank lines are skipped."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or re.fullmatch(r"\+[-=+]*\+?", stripped):
            continue
        if not (stripped.startswith("|") and stripped.endswith("|")):
            raise NpuSmiError(line_no, line, "expected a table row between '|' characters")
        yield line_no, line, [c.strip() for c in stripped[1:-1].split("|")]


def _is_title(cells: list[str]) -> bool:
    return cells[0].startswith(_TITLE_WORDS) and not cells[0][:1].isdigit()


@dataclass(frozen=True)
class _Header:
    """The NPU row of a block, kept until its chip row arrives."""

    line_no: int
    line: str
    npu: int
    model: str
    health_word: str
    power_cell: str


def _header_row(line_no: int, line: str, cells: list[str]) -> _Header:
    match = _HEADER_ROW.match(cells[0])
    if len(cells) != 3 or match is None:
        raise NpuSmiError(line_no, line, "expected an NPU row: '| <npu> <name> | <health> | ... |'")
    try:
        model = card_model(_model_name(match["name"])).name
    except ValidationError as exc:
        raise NpuSmiError(line_no, line, exc.reason) from exc
    return _Header(line_no, line, int(match["npu"]), model, cells[1], cells[2])


def _chip_row(line_no: int, line: str, cells: list[str], header: _Header) -> CardReading:
    chip = _CHIP_ROW.match(cells[0])
    if len(cells) != 3 or chip is None or not _BUS_ID.match(cells[1]):
        raise NpuSmiError(line_no, line, "expected a chip row: '| <chip> | <bus id> | <aicore> ... |'")
    figures = _CHIP_FIGURES.match(cells[2])
    if figures is None or int(figures["hbm_total"]) == 0:
        raise NpuSmiError(line_no, line, "expected '<aicore%> [<mem used> / <total>] <hbm used> / <hbm total>'")
    spec = card_model(header.model)
    card = Card(
        uuid=card_uuid_from_bus_id(cells[1]),
        index=header.npu,
        model=spec.name,
        aicores=spec.aicores,
        hbm_mib=int(figures["hbm_total"]),
        chip=int(chip["chip"]),
        health=_health(header.health_word),
        bus_id=cells[1],
    )
    power, temperature = _power_and_temperature(header.power_cell)
    aicore = None if figures["aicore"] in ("NA", "-") else float(figures["aicore"])
    return CardReading(
        card=card,
        hbm_used_mib=int(figures["hbm_used"]),
        aicore_percent=aicore,
        power_w=power,
        temperature_c=temperature,
        health_word=header.health_word,
    )


def _model_name(name: str) -> str:
    """``910B3`` or ``Ascend910B3`` -> ``910B3``."""
    return name.removeprefix("Ascend").strip()


def _health(word: str) -> Health:
    return Health.HEALTHY if word.upper() in _HEALTHY_WORDS else Health.UNHEALTHY


def _power_and_temperature(cell: str) -> tuple[float | None, int | None]:
    words = cell.split()
    power = _number(words[0]) if words else None
    temperature = _number(words[1]) if len(words) > 1 else None
    return power, None if temperature is None else int(temperature)


def _number(word: str) -> float | None:
    try:
        return float(word)
    except ValueError:
        return None


def _process_row(line_no: int, line: str, cells: list[str]) -> list[NpuProcess]:
    if len(cells) == 1 and _NO_PROCESS.match(cells[0]):
        return []
    npu = _PROCESS_NPU.match(cells[0])
    if len(cells) != 4 or npu is None or not cells[1].isdigit() or not cells[3].isdigit():
        raise NpuSmiError(line_no, line, "expected a process row: '| <npu> <chip> | <pid> | <name> | <MB> |'")
    return [
        NpuProcess(
            npu=int(npu["npu"]), chip=int(npu["chip"]), pid=int(cells[1]), name=cells[2], memory_mib=int(cells[3])
        )
    ]


def parse_npu_smi_processes(text: str) -> list[NpuProcess]:
    """The processes table of ``npu-smi info`` (empty when every NPU says no running processes)."""
    return list(parse_npu_smi(text).processes)


def parse_chip_mapping(text: str) -> list[ChipMapping]:
    """Rows of ``npu-smi info -m``: ``NPU ID  Chip ID  Chip Logic ID  Chip Name``."""
    rows: list[ChipMapping] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[:2] == ["NPU", "ID"]:
            continue
        if (
            len(words) < 4
            or not words[0].isdigit()
            or not words[1].isdigit()
            or not (words[2].isdigit() or words[2] == "-")
        ):
            raise NpuSmiError(line_no, line, "expected '<npu id> <chip id> <logic id or -> <chip name>'")
        logic = int(words[2]) if words[2].isdigit() else None
        rows.append(ChipMapping(npu=int(words[0]), chip=int(words[1]), logic_id=logic, name=" ".join(words[3:])))
    if not rows:
        raise NpuSmiError(1, text.splitlines()[0] if text.strip() else "", "no chip rows in 'npu-smi info -m'")
    return rows


@dataclass(frozen=True)
class BoardInfo:
    """The fields of ``npu-smi info -t board -i N`` that identify a card."""

    npu: int | None
    serial_number: str
    bus_id: str
    fields: dict[str, str]


def parse_board_info(text: str) -> BoardInfo:
    """``Key : value`` lines of the board query; values of ``NA`` are kept as empty strings."""
    fields: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise NpuSmiError(line_no, line, "expected '<key> : <value>'")
        value = value.strip()
        fields[key.strip()] = "" if value == "NA" else value
    if not fields:
        raise NpuSmiError(1, "", "empty board query output")
    npu = fields.get("NPU ID", "")
    return BoardInfo(
        npu=int(npu) if npu.isdigit() else None,
        serial_number=fields.get("Serial Number", ""),
        bus_id=fields.get("PCIe Bus Info", ""),
        fields=fields,
    )
