"""Admission of registrations onto cards: tables of cases for the pure decision."""

from __future__ import annotations

import pytest

from flexnpu.cards import Card
from flexnpu.registration import Registration
from flexnpu.shim.core.admission import Capacity, Outcome, admit, card_usage, find_card, restore_order

CARDS = [
    Card.of_model("910B3", index=0, uuid="c0"),
    Card.of_model("910B4", index=1, uuid="c1"),
    Card.of_model("910B3", index=2, uuid="c2", chip=1),
]


def reg(fid: str, aicore: int, memory: int = 1024, npu: int = 0, chip: int = 0, entity: str = "e") -> Registration:
    return Registration(flexnpu_id=fid, entity=entity, npu=npu, chip=chip, aicore_alloc=aicore, memory_alloc=memory)


def existing(*registrations: Registration) -> dict[str, Registration]:
    return {r.flexnpu_id: r for r in registrations}


@pytest.mark.parametrize(
    ("candidate", "current", "capacity", "outcome"),
    [
        (reg("a", 2), [], Capacity(10), Outcome.CREATED),
        (reg("a", 10), [], Capacity(10), Outcome.CREATED),
        (reg("a", 11), [], Capacity(10), Outcome.CONFLICT),
        (reg("b", 8), [reg("a", 2)], Capacity(10), Outcome.CREATED),
        (reg("b", 9), [reg("a", 2)], Capacity(10), Outcome.CONFLICT),
        (reg("b", 8), [reg("a", 2, npu=1)], Capacity(10), Outcome.CREATED),
        (reg("d", 8), [reg("a", 2), reg("b", 2), reg("c", 8)], Capacity(10, 2.0), Outcome.CREATED),
        (reg("e", 1), [reg("a", 2), reg("b", 2), reg("c", 8), reg("d", 8)], Capacity(10, 2.0), Outcome.CONFLICT),
        (reg("b", 3), [reg("a", 3)], Capacity(10, 1.5), Outcome.CREATED),
        (reg("a", 2), [reg("a", 2)], Capacity(10), Outcome.UNCHANGED),
        (reg("a", 9), [reg("a", 2)], Capacity(10), Outcome.UPDATED),
        (reg("a", 9), [reg("a", 2), reg("b", 2)], Capacity(10), Outcome.CONFLICT),
        (reg("a", 2, npu=1), [reg("a", 2), reg("b", 8, npu=1)], Capacity(10), Outcome.UPDATED),
        (reg("a", 2, entity="other"), [reg("a", 2)], Capacity(10), Outcome.UPDATED),
    ],
)
def test_aicore_quota(
    candidate: Registration, current: list[Registration], capacity: Capacity, outcome: Outcome
) -> None:
    assert admit(candidate, existing(*current), CARDS, capacity).outcome is outcome


@pytest.mark.parametrize(
    ("candidate", "current", "outcome"),
    [
        (reg("a", 1, memory=65536), [], Outcome.CREATED),
        (reg("a", 1, memory=65537), [], Outcome.CONFLICT),
        (reg("a", 1, memory=32769, npu=1), [], Outcome.CONFLICT),
        (reg("b", 1, memory=32768), [reg("a", 1, memory=32768)], Outcome.CREATED),
        (reg("b", 1, memory=32769), [reg("a", 1, memory=32768)], Outcome.CONFLICT),
        (reg("a", 1, memory=65536), [reg("a", 1, memory=32768)], Outcome.UPDATED),
    ],
)
def test_memory_never_oversubscribed(candidate: Registration, current: list[Registration], outcome: Outcome) -> None:
    assert admit(candidate, existing(*current), CARDS, Capacity(10, 4.0)).outcome is outcome


@pytest.mark.parametrize(
    ("candidate", "field"),
    [
        (reg("a", 1, npu=7), "npu"),
        (reg("a", 1, npu=2, chip=0), "chip"),
        (reg("a", 1, npu=0, chip=1), "chip"),
    ],
)
def test_unknown_card_names_the_field(candidate: Registration, field: str) -> None:
    decision = admit(candidate, {}, CARDS, Capacity(10))
    assert (decision.outcome, decision.field) == (Outcome.INVALID, field)
    assert f"{field}={getattr(candidate, field)}" in decision.reason


def test_conflict_reasons_name_the_card_and_the_amounts() -> None:
    quota = admit(reg("b", 9), existing(reg("a", 2)), CARDS, Capacity(10)).reason
    assert "npu 0" in quota and "c0" in quota and "2 of 10" in quota and "8 free" in quota
    memory = admit(reg("b", 1, memory=40000), existing(reg("a", 1, memory=30000)), CARDS, Capacity(10)).reason
    assert "memory_alloc 40000" in memory and "30000 of 65536" in memory and "35536 MiB free" in memory


def test_accepted_outcomes() -> None:
    assert {o for o in Outcome if o.accepted} == {Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED}


def test_card_usage_and_lookup() -> None:
    regs = [reg("a", 2, memory=100), reg("b", 3, memory=200), reg("c", 4, npu=1)]
    assert card_usage(regs, CARDS[0]).aicore == 5
    assert card_usage(regs, CARDS[0], skip_id="b").memory_mib == 100
    assert card_usage(regs, CARDS[0]).tenants == 2
    assert find_card(CARDS, 2, 1) is CARDS[2]
    assert find_card(CARDS, 2, 0) is None


def test_restore_keeps_what_fits_in_order_and_reports_the_rest() -> None:
    saved = [reg("a", 6), reg("b", 6), reg("c", 4), reg("d", 1, npu=5)]
    accepted, refused = restore_order(saved, CARDS, Capacity(10))
    assert list(accepted) == ["a", "c"]
    assert [(r.flexnpu_id, d.outcome) for r, d in refused] == [("b", Outcome.CONFLICT), ("d", Outcome.INVALID)]
