"""The lane's garbage-collection policy: passes between batches, survivors frozen, cycles freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.worker.collector import BatchCollector


@pytest.fixture
def collector() -> Iterator[BatchCollector]:
    c = BatchCollector(young=1_000, full_every_s=3600.0)
    yield c
    c.close()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_no_automatic_collection_inside_a_batch(collector: BatchCollector) -> None:
    assert not gc.isenabled()
    dead = _cycle()
    kept = [[] for _ in range(5_000)]  # far past the young threshold: nothing runs by itself
    assert dead() is not None
    collector.after_batch()  # the batch is over: now it runs
    assert dead() is None
    assert kept


def test_survivors_are_frozen_so_no_later_pass_walks_them(collector: BatchCollector) -> None:
    frozen = gc.get_freeze_count()
    kept = [[] for _ in range(2_000)]  # lists: always tracked (an empty dict is not)
    collector.after_batch()
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert gc.get_count()[0] < 1_000


def test_below_the_threshold_nothing_runs(collector: BatchCollector) -> None:
    collector.after_batch()
    dead = _cycle()
    collector.after_batch()
    assert dead() is not None
    collector.full()
    assert dead() is None


def test_the_periodic_full_pass_frees_cycles_that_died_after_being_frozen() -> None:
    c = BatchCollector(young=10, full_every_s=0.0)
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        _ = [[] for _ in range(50)]
        c.after_batch()  # a and b are alive, so frozen with the survivors
        del a, b
        assert ref() is not None
        c.after_batch()  # full_every_s elapsed: unfreeze, collect everything, freeze again
        assert ref() is None
    finally:
        c.close()


def test_close_gives_python_its_collector_back() -> None:
    BatchCollector().close()
    assert gc.isenabled() and gc.get_freeze_count() == 0
