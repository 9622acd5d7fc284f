"""Small builders of cards, nodes and demands for the placement core's tests."""

from __future__ import annotations

from flexnpu.extender.core.model import CardState, NodeState, PodDemand
from flexnpu.priority import Priority
from flexnpu.units import UnitsConfig, parse_vnpu_request

U = 10
HBM = 65536


def card(
    index: int,
    used: int = 0,
    memory_used: int | None = None,
    model: str = "910B3",
    healthy: bool = True,
    units_total: int = U,
    hbm: int = HBM,
) -> CardState:
    memory = used * hbm // U if memory_used is None else memory_used
    return CardState(
        uuid=f"npu-{index}",
        index=index,
        model=model,
        units_total=units_total,
        units_used=used,
        memory_total_mib=hbm,
        memory_used_mib=memory,
        healthy=healthy,
    )


def node(name: str, *cards: CardState, cpu_total: int = 0, cpu_used: int = 0, units_per_card: int = U) -> NodeState:
    return NodeState(
        name=name, cards=cards, units_per_card=units_per_card, cpu_milli_total=cpu_total, cpu_milli_used=cpu_used
    )


def empty_node(name: str, count: int = 8, **kwargs: object) -> NodeState:
    return node(name, *(card(i) for i in range(count)), **kwargs)  # type: ignore[arg-type]


def demand(
    units: int,
    memory_mib: int | None = None,
    models: frozenset[str] = frozenset(),
    cpu_milli: int = 0,
    units_per_card: int = U,
) -> PodDemand:
    request = parse_vnpu_request(units, UnitsConfig(units_per_card=units_per_card), memory_mib)
    return PodDemand(request=request, models=models, cpu_milli=cpu_milli, priority=Priority.NORMAL)
