"""Python's cyclic garbage collector, run between batches instead of inside them.

Reference counting frees almost everything the lane allocates; the cyclic collector only finds
cycles, yet by default it runs whenever allocations outpace frees, in the middle of a batch, and
then walks every container still alive: the whole batch in flight (tens of thousands of objects)
and, in an older generation's pass, every card's and terminal's state (with a day of state, a
pause every verdict in flight waits out; README "Garbage collection between batches"). So the lane
turns automatic collection off and, after each batch, once the batch's temporaries are freed:

- once ``young`` containers more are alive than at the last pass, collects the young generation
  (a pass that sees only what survived: new state entries, remembered scores) and then
  ``gc.freeze()``s the survivors, so no later pass walks them again;
- every ``full_every_s``, unfreezes everything and makes one full collection, for cycles that
  died after they were frozen (state is plain acyclic data freed by reference counting; the
  worker's own cycles are rare: asyncio and exception frames). That pass is the one long pause,
  once every half hour.

Each pass is timed as a stage of ``rakshit_stage_seconds`` (``gc0`` young, ``gc2`` full).

    collector = BatchCollector()
    while running:
        process(batch)
        collector.after_batch()
"""

from __future__ import annotations

import gc
import time

from streams.worker import metrics

# Containers alive since the last pass that make a young pass due; README "Garbage collection
# between batches" says what a pass costs.
YOUNG = 20_000
FULL_EVERY_S = 1800.0


class BatchCollector:
    def __init__(self, young: int = YOUNG, full_every_s: float = FULL_EVERY_S) -> None:
        self.young = young
        self.full_every_s = full_every_s
        gc.disable()  # process-wide: the worker's other threads are collected here too
        self.full()

    def after_batch(self) -> None:
        if gc.get_count()[0] >= self.young:
            self._collect(0)
            gc.freeze()
        if time.monotonic() - self.full_at >= self.full_every_s:
            self.full()

    def full(self) -> None:
        """Everything walked once, then frozen (at start, after a partition's state is recovered,
        and every ``full_every_s``)."""
        gc.unfreeze()
        self._collect(2)
        gc.freeze()
        self.full_at = time.monotonic()

    def close(self) -> None:
        gc.unfreeze()
        gc.enable()

    @staticmethod
    def _collect(generation: int) -> None:
        started = time.perf_counter()
        gc.collect(generation)
        metrics.child(metrics.STAGE_SECONDS, f"gc{generation}").observe(
            time.perf_counter() - started)
