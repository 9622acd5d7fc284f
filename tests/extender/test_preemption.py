"""Preemption: a high pod that fits nowhere gets the fewest lower-priority victims; nobody else evicts anyone."""

from __future__ import annotations

import pytest
from extender_kit import Extender, inventory, pod

from flexnpu.annotations import CardAssignment
from flexnpu.extender.core.model import PodDemand, node_state
from flexnpu.extender.preemption import Occupant, victims_for
from flexnpu.priority import Priority
from flexnpu.units import UnitsConfig, parse_vnpu_request

HIGH, NORMAL, LOW = Priority.HIGH.rank, Priority.NORMAL.rank, Priority.LOW.rank
MIB = 6553  # memory of one unit of a 910B3 card


def occupant(uid: str, rank: int, *shares: tuple[int, int]) -> Occupant:
    """``shares``: (card index, units) pairs."""
    return Occupant(uid, rank, tuple(CardAssignment(f"card-{c}", c, u, u * MIB) for c, u in shares))


def demand(units: int, priority: Priority = Priority.HIGH) -> PodDemand:
    return PodDemand(request=parse_vnpu_request(units, UnitsConfig()), priority=priority)


@pytest.mark.parametrize(
    ("units", "occupants", "expected"),
    [
        # card 0: one low 6-unit pod; card 1: three low 2-unit pods -> evicting the one pod is fewest
        (
            5,
            [
                occupant("big", LOW, (0, 6)),
                occupant("s1", LOW, (1, 2)),
                occupant("s2", LOW, (1, 2)),
                occupant("s3", LOW, (1, 2)),
                occupant("n", NORMAL, (0, 4)),
                occupant("n2", NORMAL, (1, 4)),
            ],
            ("big",),
        ),
        # lower priority goes first among equally many
        (4, [occupant("n", NORMAL, (0, 10)), occupant("l", LOW, (1, 10))], ("l",)),
        # a high occupant is never evicted
        (4, [occupant("h", HIGH, (0, 10)), occupant("h2", HIGH, (1, 10))], None),
        # two victims needed on the best card
        (
            6,
            [
                occupant("a", LOW, (0, 4)),
                occupant("b", LOW, (0, 4)),
                occupant("c", NORMAL, (0, 2)),
                occupant("h", HIGH, (1, 6)),
                occupant("d", LOW, (1, 4)),
            ],
            ("a", "b"),
        ),
        # whole card: clear the card with the fewest occupants
        (10, [occupant("a", LOW, (0, 5)), occupant("b", LOW, (0, 5)), occupant("c", LOW, (1, 9))], ("c",)),
        # whole card: both cards pinned by a high pod
        (10, [occupant("h", HIGH, (0, 1)), occupant("h2", HIGH, (1, 1)), occupant("c", LOW, (1, 9))], None),
    ],
)
def test_fewest_lower_priority_victims(units: int, occupants: list[Occupant], expected: tuple[str, ...] | None) -> None:
    node = node_state("n1", inventory(2), [a for o in occupants for a in o.assignments])
    assert victims_for(demand(units), node, occupants) == expected


def test_a_normal_pod_evicts_nobody() -> None:
    occupants = [occupant("l", LOW, (0, 10)), occupant("l2", LOW, (1, 10))]
    node = node_state("n1", inventory(2), [a for o in occupants for a in o.assignments])
    assert victims_for(demand(2, Priority.NORMAL), node, occupants) is None


def test_the_schedulers_victims_are_kept_when_they_make_room() -> None:
    occupants = [occupant("l", LOW, (0, 10)), occupant("l2", LOW, (1, 10))]
    node = node_state("n1", inventory(2), [a for o in occupants for a in o.assignments])
    assert victims_for(demand(2, Priority.NORMAL), node, occupants, frozenset({"l2"})) == ("l2",)


async def test_preempt_verb_in_both_forms(extender: Extender) -> None:
    extender.add_node("n1", inventory(1))
    filler = extender.create_pod(pod("batch", 8, priority="low"))
    await extender.post("filter", {"Pod": filler, "NodeNames": ["n1"]})
    await extender.post(
        "bind", {"PodName": "batch", "PodNamespace": "default", "PodUID": filler["metadata"]["uid"], "Node": "n1"}
    )
    urgent = pod("urgent", 5, priority="high")

    _, meta = await extender.post(
        "preempt",
        {
            "Pod": urgent,
            "NodeNameToMetaVictims": {
                "n1": {"Pods": [], "NumPDBViolations": 0},
                "cpu-1": {"Pods": [{"UID": "x"}], "NumPDBViolations": 1},
            },
        },
    )
    _, full = await extender.post(
        "preempt", {"Pod": urgent, "NodeNameToVictims": {"n1": {"Pods": [], "NumPDBViolations": 0}}}
    )

    expected = {"n1": {"Pods": [{"UID": filler["metadata"]["uid"]}], "NumPDBViolations": 0}}
    assert meta == {"NodeNameToMetaVictims": expected}
    assert full == {"NodeNameToMetaVictims": expected}


async def test_preempt_passes_plain_pods_through(extender: Extender) -> None:
    victims = {"cpu-1": {"Pods": [{"UID": "a"}, {"UID": "b"}], "NumPDBViolations": 1}}
    _, result = await extender.post("preempt", {"Pod": pod("nginx", None), "NodeNameToMetaVictims": victims})
    assert result == {"NodeNameToMetaVictims": victims}
