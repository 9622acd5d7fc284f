"""Read the openb trace files (Alibaba cluster-trace-gpu-v2023) in every layout the published simulator ships.

Pod lists come with 11 columns (``name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,
creation_time,deletion_time,scheduled_time``), with 5 (``name,cpu_milli,memory_mib,num_gpu,gpu_milli``), or
without ``memory_mib`` (the ``nomem`` variants); the node list has ``sn,cpu_milli,memory_mib,gpu,model``. So the
reader goes by column names: the ones a replay needs are required, the descriptive ones are accepted and ignored,
any other is refused. Every value is checked (a whole number, not negative, not beyond any real machine, and a
card share that makes sense), and a pod list that asks for card models the node list does not have is refused:
each :class:`TraceError` names the file, the line and the column.

A card is ``UNITS`` = 1000 units, so ``gpu_milli`` maps one to one. Node and pod memory are the nodes'
allocatable and the pods' requests in MiB (0 when the file has no ``memory_mib``: not tracked).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from flexnpu.errors import ValidationError
from flexnpu.extender.core.model import CPU_ONLY, CardState, NodeState, PodDemand
from flexnpu.units import UnitsConfig, parse_vnpu_request

UNITS: Final = 1000
MAX_CPU_MILLI: Final = 10**7  # 10,000 cores on one node or pod: far beyond any machine of the trace
MAX_MEMORY_MIB: Final = 2**30  # 1 PiB
MAX_CARDS: Final = 64
MAX_LINES: Final = 10**7

POD_REQUIRED: Final = ("name", "cpu_milli", "num_gpu", "gpu_milli")
POD_OPTIONAL: Final = ("memory_mib", "gpu_spec")
POD_IGNORED: Final = ("qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time")
NODE_REQUIRED: Final = ("sn", "cpu_milli", "gpu")
NODE_OPTIONAL: Final = ("memory_mib", "model")


class TraceError(ValidationError):
    """A trace file that cannot be replayed as it is; the message names the file, the line and the column."""

    def __init__(self, path: Path, line: int, column: str, value: object, reason: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        super().__init__(f"{path.name} line {line}, column {column}", value, reason)


@dataclass(frozen=True)
class TracePod:
    """One row of a pod list: what it asks for, and how many thousandths of a card that is in all."""

    name: str
    demand: PodDemand
    milli: int


@dataclass(frozen=True)
class _Row:
    path: Path
    line: int
    values: Mapping[str, str]

    def text(self, column: str) -> str:
        return self.values.get(column) or ""

    def number(self, column: str, limit: int) -> int:
        raw = self.values.get(column)
        text = (raw or "").strip()
        if not text.isdigit() or len(text) > 18:
            reason = "must not be negative" if text.startswith("-") else "must be a whole number"
            raise TraceError(self.path, self.line, column, raw, reason)
        value = int(text)
        if value > limit:
            raise TraceError(self.path, self.line, column, raw, f"is larger than any machine ({limit} at most)")
        return value

    def error(self, column: str, reason: str) -> TraceError:
        return TraceError(self.path, self.line, column, self.values.get(column), reason)


def load_nodes(path: Path) -> tuple[NodeState, ...]:
    """The cluster: one node per row, ``gpu`` cards of ``model`` (U = 1000), its CPU and memory."""
    nodes = []
    seen: set[str] = set()
    for row in _rows(path, NODE_REQUIRED, NODE_OPTIONAL, ()):
        name = row.text("sn").strip()
        if not name:
            raise row.error("sn", "must name the node")
        if name in seen:
            raise row.error("sn", "names a node listed before")
        seen.add(name)
        count = row.number("gpu", MAX_CARDS)
        model = row.text("model").strip()
        if count and not model:
            raise row.error("model", "must name the card model of a node with cards")
        cards = tuple(
            CardState(
                uuid=f"{name}-{i}",
                index=i,
                model=model,
                units_total=UNITS,
                units_used=0,
                memory_total_mib=0,
                memory_used_mib=0,
                healthy=True,
            )
            for i in range(count)
        )
        nodes.append(
            NodeState(
                name=name,
                cards=cards,
                units_per_card=UNITS,
                cpu_milli_total=row.number("cpu_milli", MAX_CPU_MILLI),
                host_memory_mib_total=_optional_number(row, "memory_mib", MAX_MEMORY_MIB),
            )
        )
    if not nodes:
        raise TraceError(path, 1, "sn", None, "the node list names no node")
    return tuple(nodes)


def load_pods(path: Path, nodes: Sequence[NodeState] = ()) -> tuple[TracePod, ...]:
    """The pods in file order. With ``nodes``, a ``gpu_spec`` naming a model no node has is an error."""
    models = {card.model for node in nodes for card in node.cards}
    config = UnitsConfig(units_per_card=UNITS)
    pods = [_pod(row, config, models) for row in _rows(path, POD_REQUIRED, POD_OPTIONAL, POD_IGNORED)]
    if not pods:
        raise TraceError(path, 1, "name", None, "the pod list names no pod")
    return tuple(pods)


def _pod(row: _Row, config: UnitsConfig, models: set[str]) -> TracePod:
    cards = row.number("num_gpu", MAX_CARDS)
    milli = row.number("gpu_milli", UNITS)
    if cards == 0 and milli:
        raise row.error("gpu_milli", "must be 0 for a pod without cards (num_gpu 0)")
    if cards > 0 and milli == 0:
        raise row.error("gpu_milli", "must be above 0 for a pod with cards")
    if cards > 1 and milli != UNITS:
        raise row.error("gpu_milli", f"must be {UNITS} for a pod of several whole cards")
    wanted = frozenset(m.strip() for m in row.text("gpu_spec").split("|") if m.strip())
    unknown = sorted(wanted - models) if models else []
    if unknown:
        raise row.error("gpu_spec", f"names card model(s) {', '.join(unknown)} that no node of the node list has")
    request = CPU_ONLY if cards == 0 else parse_vnpu_request(milli if cards == 1 else cards * UNITS, config)
    demand = PodDemand(
        request=request,
        models=wanted,
        cpu_milli=row.number("cpu_milli", MAX_CPU_MILLI),
        host_memory_mib=_optional_number(row, "memory_mib", MAX_MEMORY_MIB),
    )
    return TracePod(name=row.text("name"), demand=demand, milli=cards * milli)


def _optional_number(row: _Row, column: str, limit: int) -> int:
    return row.number(column, limit) if column in row.values else 0


def _rows(path: Path, required: Sequence[str], optional: Sequence[str], ignored: Sequence[str]) -> Iterator[_Row]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            _check_header(path, header, required, (*optional, *ignored))
            for line, cells in enumerate(reader, start=2):
                if line > MAX_LINES:
                    raise TraceError(path, line, header[0], None, f"more than {MAX_LINES} lines")
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise TraceError(
                        path,
                        line,
                        header[min(len(cells), len(header)) - 1],
                        ",".join(cells)[:80],
                        f"has {len(cells)} columns, the header {len(header)}",
                    )
                yield _Row(path, line, dict(zip(header, cells, strict=True)))
    except UnicodeDecodeError as exc:
        raise TraceError(path, 0, "-", None, f"is not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise TraceError(path, 0, "-", None, f"is not CSV ({exc})") from exc


def _check_header(path: Path, header: list[str], required: Sequence[str], accepted: Sequence[str]) -> None:
    for column in header:
        if column not in required and column not in accepted:
            raise TraceError(path, 1, column, column, f"unknown column (known: {', '.join([*required, *accepted])})")
    if len(set(header)) != len(header):
        raise TraceError(path, 1, "-", ",".join(header), "repeats a column")
    for column in required:
        if column not in header:
            raise TraceError(path, 1, column, ",".join(header), "required column is missing")
