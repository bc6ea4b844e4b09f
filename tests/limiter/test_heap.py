"""A serving process's heap after start-up (limiter/serving.py `settle_heap`): what
start-up built is frozen out of the collector's walks, and cycles made later are still
collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from limiter.serving import GC_YOUNG_THRESHOLD, settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_settling_freezes_what_exists_and_raises_the_young_threshold():
    before = _Node()
    settle_heap()
    assert gc.get_freeze_count() > 0
    # Frozen: out of the generations the collector walks (get_objects lists those only).
    assert not any(o is before for o in gc.get_objects())
    after = _Node()
    assert any(o is after for o in gc.get_objects())
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    assert gc.isenabled()


@pytest.mark.usefixtures("restored_collector")
def test_a_cycle_made_after_settling_is_still_collected():
    settle_heap()
    node = _Node()
    gone = weakref.ref(node)
    del node
    gc.collect()
    assert gone() is None


@pytest.mark.usefixtures("restored_collector")
def test_garbage_cycles_of_start_up_are_freed_before_the_freeze():
    node = _Node()
    gone = weakref.ref(node)
    del node
    settle_heap()  # collects first: a frozen cycle would never be freed
    assert gone() is None
