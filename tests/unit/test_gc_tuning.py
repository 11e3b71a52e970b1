"""The daemon's garbage-collector settings: start-up's objects frozen, young collections rarer."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from jobwire import gc_tuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Put this test process's collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_before_start_freezes_what_exists_and_raises_the_young_threshold(
    restored_gc: None,
) -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    built_at_start = [{"config": i} for i in range(100)]  # containers the collector tracks
    gc_tuning.settle_before_start()
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() >= len(built_at_start)
    # Frozen objects are out of the collector's generations: a full collection skips them.
    assert not any(o is built_at_start for o in gc.get_objects())


def test_cyclic_garbage_made_after_start_is_collected_without_being_asked(
    restored_gc: None,
) -> None:
    """The collector still runs on its own: a cycle dropped after start-up is gone once
    more than the young threshold of new containers has been allocated (no gc.collect)."""
    gc_tuning.settle_before_start()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    collected: list[int] = []
    a, b = Node(), Node()
    a.other, b.other = b, a
    weakref.finalize(a, collected.append, 1)
    del a, b
    # Net new containers, held until the threshold has been passed several times over.
    held = [[i] for i in range(3 * gc_tuning.YOUNG_THRESHOLD)]
    assert collected == [1]
    del held
