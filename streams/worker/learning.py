"""What each scoring partition has learned, kept in the partition's own state and changelog.

Learning follows the partition (``agents.fraud.learned``), so it is saved where the partition's
terminal state already is: the terminal store, under keys no terminal id takes.

- ``learned:state``: the partition's ``Learned.to_state()`` (online learner, label windows,
  disparity window, labels waiting for their known_at), put at each checkpoint that changed it;
- ``learned:drift``: the evaluator's drift sample, put at most every ``DRIFT_EVERY_S``;
- ``scored:<transaction id>``: what a decided transaction was scored with (score, decision,
  features), so its label, days later, can teach the learners. The oldest go first once a
  partition holds ``memory`` of them, and a label takes its entry out: each leaves a tombstone.

Recovery is the store's (``streams.worker.store.recover``): the new owner reads the changelog and
``adopt`` rebuilds the ``Learned`` before the partition's first record. The changelog may run
ahead of the committed offsets; a label read again skips itself (``Learned.take_label``), and a
decision read again is not made again at all (the lane re-sends the verdict it already published).

    learning = Learning(pipeline, terminals)        # terminals: the terminal-state Store
    learning.adopt(3)                               # after terminals.adopt(3, recovered_table)
    learned = learning.of(3)
    learning.remember(3, "tx-1", row, 0.91, "DECLINE")
    learning.take(3, "tx-1")                         # -> Scored(features, score, decision)
    learning.save(now)                               # before the checkpoint writes the store
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.fraud.learned import Learned
from agents.fraud.pipeline import DecisionPipeline
from streams.worker.store import Store

STATE_KEY = "learned:state"
DRIFT_KEY = "learned:drift"
SCORED = "scored:"
DRIFT_EVERY_S = 30.0
QUALITY_EVERY_S = 10.0
MEMORY = 200_000  # scored transactions remembered per worker, shared out per partition


@dataclass(slots=True)
class Scored:
    features: dict[str, float]
    score: float
    decision: str


def _layout(names: tuple[str, ...]) -> int:
    """A fingerprint of the feature order a scored entry was written with: an entry from a worker
    with another feature list is not read with this one's names."""
    return zlib.crc32("\x1f".join(names).encode())


class Learning:
    def __init__(self, pipeline: DecisionPipeline, store: Store, names: tuple[str, ...],
                 memory: int = MEMORY) -> None:
        self.pipeline = pipeline
        self.store = store
        self.names = names
        self._layout = _layout(names)
        self.memory = memory
        self.learned: dict[int, Learned] = {}
        self._order: dict[int, deque[str]] = {}
        self._drift_at: dict[int, float] = {}
        self._quality_at: dict[int, float] = {}
        self._quality_seen: dict[int, tuple[int, int]] = {}

    # -- ownership ---------------------------------------------------------------------------

    def adopt(self, q: int) -> Learned:
        """Rebuild partition ``q``'s learning from its (recovered) table."""
        table = self.store.table(q)
        learned = Learned.restore(table.get(STATE_KEY), table.get(DRIFT_KEY),
                                  self.pipeline.new_learned)
        self.learned[q] = learned
        self._order[q] = deque(k for k in table if k.startswith(SCORED))
        self._drift_at[q] = time.monotonic()
        return learned

    def drop(self, q: int) -> None:
        self.learned.pop(q, None)
        self._quality_seen.pop(q, None)
        self._order.pop(q, None)
        self._drift_at.pop(q, None)

    def of(self, q: int) -> Learned:
        """The partition's ``Learned``; one not yet owned starts empty (the in-memory lane)."""
        learned = self.learned.get(q)
        if learned is None:
            if not self.store.owns(q):
                self.store.adopt(q, {})
            learned = self.adopt(q)
        return learned

    # -- scored transactions -----------------------------------------------------------------

    def remember(self, q: int, tx_id: str, row: Mapping[str, float], score: float,
                 decision: str) -> None:
        key = SCORED + tx_id
        table = self.store.table(q)
        order = self._order.setdefault(q, deque())
        if key not in table:
            order.append(key)
        # orjson writes a missing value, NaN or infinity as null; ``take`` leaves nulls out.
        get = row.get
        self.store.put(q, key, [score, decision, self._layout, [get(n) for n in self.names]])
        limit = max(1, self.memory // max(1, len(self.learned)))
        while len(order) > limit:
            self.store.delete(q, order.popleft())

    def take(self, q: int, tx_id: str) -> Scored | None:
        """What ``tx_id`` was scored with, taken out of the memory; None if not remembered."""
        key = SCORED + tx_id
        entry = self.store.table(q).get(key)
        if entry is None:
            return None
        self.store.delete(q, key)  # its place in the eviction order goes when it comes round
        score, decision, layout, values = entry
        if layout != self._layout:
            return None
        features = {n: float(v) for n, v in zip(self.names, values, strict=True)
                    if v is not None}
        return Scored(features, float(score), str(decision))

    # -- checkpoint --------------------------------------------------------------------------

    def save(self, now: float | None = None) -> None:
        """Put what changed into the store, for the checkpoint that follows to write."""
        now = time.monotonic() if now is None else now
        for q, learned in self.learned.items():
            if not self.store.owns(q):
                continue
            if learned.changed:
                self.store.put(q, STATE_KEY, learned.to_state())
            if now - self._drift_at.get(q, 0.0) >= DRIFT_EVERY_S:
                self._drift_at[q] = now
                self.store.put(q, DRIFT_KEY, learned.drift_state())

    # -- the fleet's view of model quality ---------------------------------------------------

    def quality(self, now: float | None = None) -> list[dict[str, Any]]:
        """A model-quality record (schemas/model_quality.avsc) for each owned partition whose
        label windows changed, at most every ``QUALITY_EVERY_S`` per partition; and one for each
        newly owned partition, so the API hears which worker holds it now."""
        now = time.monotonic() if now is None else now
        out = []
        for q, learned in self.learned.items():
            evaluator = learned.evaluator
            seen = (evaluator.labels_recorded, evaluator.feedback_recorded)
            if self._quality_seen.get(q) == seen or \
                    now - self._quality_at.get(q, -QUALITY_EVERY_S) < QUALITY_EVERY_S:
                continue
            self._quality_seen[q], self._quality_at[q] = seen, now
            window = evaluator.label_state()
            genuine, total = evaluator.feedback_counts()
            out.append({"partition": q, "updated_at": datetime.now(UTC),
                        "scores": window["window"]["scores"],
                        "frauds": window["window"]["labels"],
                        "flagged": window["window"]["flagged"],
                        "labels_recorded": evaluator.labels_recorded,
                        "feedback_genuine": genuine, "feedback_total": total})
        return out

    # -- figures -----------------------------------------------------------------------------

    def owned(self) -> Iterator[Learned]:
        return iter(self.learned.values())

    def totals(self) -> dict[str, Any]:
        """Sums over the owned partitions, for the worker's own metrics."""
        online = labels = feedback = learned = 0
        genuine_flags = flags = 0
        for item in self.learned.values():
            online += item.online.labels_seen if item.online is not None else 0
            labels += item.evaluator.labels_recorded
            feedback += item.evaluator.feedback_recorded
            learned += item.labels_learned
            genuine, found = item.evaluator.feedback_counts()
            flags += found
            genuine_flags += genuine
        return {"online_labels": online, "evaluator_labels": labels,
                "evaluator_feedback": feedback, "labels_learned": learned,
                "false_positive_rate": genuine_flags / flags if flags else None}

