"""flexnpu.heap: the start-up heap of a long-running component is kept out of later full collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from flexnpu.heap import freeze_startup_heap


class Node:
    """An object of the start-up heap, in a reference cycle (the kind only the cyclic collector frees)."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap given back to the collector afterwards."""
    yield
    gc.unfreeze()


def test_objects_alive_at_the_freeze_leave_the_collected_generations(unfrozen: None) -> None:
    before = Node()
    frozen = freeze_startup_heap()
    after = Node()
    tracked = {id(o) for o in gc.get_objects()}
    assert frozen == gc.get_freeze_count() > 0
    assert id(before) not in tracked  # a full collection no longer walks it
    assert id(after) in tracked  # what the component makes later is collected as before


def test_garbage_made_before_the_freeze_is_collected_by_it(unfrozen: None) -> None:
    garbage = weakref.ref(Node())  # unreachable already, kept alive only by its own cycle
    freeze_startup_heap()
    assert garbage() is None  # collected, not frozen for good
