"""frozen_heap: start-up objects out of the collector's sight while inside, garbage still freed."""

from __future__ import annotations

import gc
import weakref

from edge_service.heap import frozen_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_frozen_while_inside_and_released_after() -> None:
    before = object()
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        del before
    assert gc.get_freeze_count() == 0


def test_cycles_made_inside_are_still_collected() -> None:
    with frozen_heap():
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector can free it
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None


def test_start_up_garbage_is_collected_before_freezing() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    with frozen_heap():
        assert gone() is None  # not frozen for ever as uncollected garbage
