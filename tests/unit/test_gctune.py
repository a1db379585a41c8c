"""The worker's collector settings: applied, and cycles still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mailward import gctune


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    """A container that can take part in a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_freezes_startup_objects_and_raises_thresholds(restored_collector: None) -> None:
    built_at_start = [Node() for _ in range(100)]
    gctune.settle_after_start()
    assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, *gctune.OLDER_THRESHOLDS)
    assert gc.get_freeze_count() >= len(built_at_start)


def test_cycles_made_after_settling_are_still_collected(restored_collector: None) -> None:
    gctune.settle_after_start()
    first, second = Node(), Node()
    first.other, second.other = second, first
    probe = weakref.ref(first)
    del first, second
    assert probe() is not None  # only the collector can free a cycle
    gc.collect()
    assert probe() is None
