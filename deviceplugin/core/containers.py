"""A pod's cards split across its containers, as kubelet allocates them one container at a time.

The extender assigns the pod as a whole (``flexnpu.io/assigned``: units and memory per card for the pod's
effective request, DESIGN.md section 4); kubelet then sends one Allocate per container. Each container gets its
own part of that assignment, by a rule every reader can recompute from the pod spec and the annotation alone:

- App containers (and restartable init containers, which keep running beside them) run together: they take the
  assignment's units in kubelet order, each one starting where the previous one stopped, card by card.
- A (non-restartable) init container runs alone before them, so it takes its units from the start of the
  assignment, as the first app container will (kubelet hands the same device IDs on: ``devicesToReuse``).
- Memory on a card: a container that sets ``huawei.com/vnpu-memory`` gets what it set (spread over its cards by
  units); the card's memory that no co-running container set is shared by the others in proportion to their
  units there (floor). So the containers of a pod never hold more than the pod was assigned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flexnpu.annotations import CardAssignment
from flexnpu.deviceplugin.core.allocation import AllocationError, ContainerRequest
from flexnpu.registration import Registration


@dataclass(frozen=True)
class _Piece:
    card: CardAssignment
    units: int


def container_cards(
    assignment: Sequence[CardAssignment], containers: Sequence[ContainerRequest], target: ContainerRequest
) -> tuple[CardAssignment, ...]:
    """The part of the pod's ``assignment`` that ``target`` (one of ``containers``) gets, with its memory cap.

    AllocationError when the assignment holds fewer units than the containers ask for (a hand-edited annotation,
    or a spec the extender did not see).
    """
    group = [target] if target.init else [c for c in containers if not c.init]
    pieces = _fill(assignment, group)
    mine = pieces[target.name]
    memory = _memory(assignment, group, pieces)
    return tuple(
        CardAssignment(
            uuid=p.card.uuid, index=p.card.index, units=p.units, memory_mib=memory[(target.name, p.card.uuid)]
        )
        for p in mine
    )


def _fill(assignment: Sequence[CardAssignment], group: Sequence[ContainerRequest]) -> dict[str, list[_Piece]]:
    """Each container of ``group`` takes its units in order, card by card, from the start of the assignment."""
    total = sum(a.units for a in assignment)
    asked = sum(c.units for c in group)
    if asked > total:
        names = ", ".join(f"{c.name}={c.units}" for c in group)
        raise AllocationError(f"containers ask for {asked} unit(s) ({names}), the pod's assignment holds {total}")
    left = [a.units for a in assignment]
    card = 0
    out: dict[str, list[_Piece]] = {}
    for container in group:
        need, taken = container.units, []
        while need:
            while left[card] == 0:
                card += 1
            step = min(need, left[card])
            taken.append(_Piece(assignment[card], step))
            left[card] -= step
            need -= step
        out[container.name] = taken
    return out


def _memory(
    assignment: Sequence[CardAssignment], group: Sequence[ContainerRequest], pieces: dict[str, list[_Piece]]
) -> dict[tuple[str, str], int]:
    """MiB per (container, card uuid) on the cards ``pieces`` use."""
    out: dict[tuple[str, str], int] = {}
    for card in assignment:
        on_card = [(c, p.units) for c in group for p in pieces[c.name] if p.card.uuid == card.uuid]
        set_here = {
            c.name: _declared_share(c, units, pieces[c.name]) for c, units in on_card if c.memory_mib is not None
        }
        rest = max(0, card.memory_mib - sum(set_here.values()))
        free_units = sum(units for c, units in on_card if c.name not in set_here)
        for c, units in on_card:
            if c.name in set_here:
                out[(c.name, card.uuid)] = min(set_here[c.name], card.memory_mib)
            else:
                out[(c.name, card.uuid)] = rest * units // free_units
    return out


def _declared_share(container: ContainerRequest, units: int, pieces: Sequence[_Piece]) -> int:
    """The part of a container's own memory request that falls on one of its cards (by units there)."""
    assert container.memory_mib is not None
    return container.memory_mib * units // sum(p.units for p in pieces)


@dataclass(frozen=True)
class PodClaim:
    """A VNpuClaim of the pod, as the adapter read it: the card it is for, the registration id it has, and the body
    flexnpud registers it with (None when its spec does not parse or names another node: the operator reports it)."""

    name: str
    npu: int
    flexnpu_id: str
    registration: Registration | None = None


def claims_for_cards(claims: Sequence[PodClaim], cards: Sequence[CardAssignment]) -> tuple[PodClaim, ...]:
    """The claim of each of ``cards`` (in their order), or () while a card has no claim yet."""
    by_npu = {c.npu: c for c in claims if c.flexnpu_id}
    if not cards or any(c.index not in by_npu for c in cards):
        return ()
    return tuple(by_npu[c.index] for c in cards)
