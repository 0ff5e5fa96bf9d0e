"""What a slice of traffic has taught the decision chain, in one object that can be saved.

The worker splits its terminal stage into partitions, and learning follows the partition: each
scoring partition owns a ``Learned``, holding

- its online learner (``scoring.online``), which the blend trusts once it has seen enough labels;
- its evaluator (``agents.fraud.evaluator``): the drift sample, rolling AUC/AP and the flags'
  precision over labelled scores, and the analysts' false-positive window the thresholds adapt to;
- its decline-disparity window (``agents.fraud.guardrail.DisparityMonitor``);
- the labels waiting for event time to pass their ``known_at``, the partition's event-time
  watermark, and the offset of the last label it took in (a replay after a crash skips up to it,
  so no label is learned twice).

Why per partition and not per process: a restarted process has no identity to find its learner
by; a partition has, and its new owner (the same worker after a restart, another after a
rebalance) restores what it learned before deciding anything. Each learner sees the labels of its
own share of the terminals, a random sample of the traffic.

Saved in two parts because they change at different rates: ``to_state`` (the learner, the label
windows, the disparity window, the waiting labels: written at each checkpoint that changed them)
and ``drift_state`` (the drift sample, larger, which only feeds a report every few thousand
verdicts: written every so many seconds). Both are JSON-ready dicts.

    learned = Learned(make_online(), Evaluator(), DisparityMonitor())
    if learned.take_label(offset=17, known_at_ms=t, tx_id="tx-1", fraud=True, origin="ISSUER"):
        ...  # queued until the watermark reaches t
    again = Learned.restore(learned.to_state(), learned.drift_state(), fresh=...)
"""

from __future__ import annotations

import base64
import heapq
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.evaluator import Evaluator
from agents.fraud.guardrail import DisparityMonitor
from scoring.online import OnlineModel, StateMismatch, restore_online

__all__ = ["Learned", "WaitingLabel"]

STATE_FORMAT = 1
log = logging.getLogger(__name__)

# (known_at ms, transaction id, fraud, label origin): a heap ordered by known_at.
WaitingLabel = tuple[int, str, bool, str]


@dataclass
class Learned:
    online: OnlineModel | None
    evaluator: Evaluator
    disparity: DisparityMonitor
    waiting: list[WaitingLabel] = field(default_factory=list)
    watermark_ms: int = 0
    labels_upto: int = -1  # offset of the last label taken in, in the partition's input
    labels_learned: int = 0
    labels_unmatched: int = 0
    changed: bool = False  # since the last to_state

    def take_label(self, offset: int, known_at_ms: int, tx_id: str, fraud: bool,
                   origin: str) -> bool:
        """Queue a label read at ``offset``; False when a replay brings one already taken in."""
        if offset >= 0 and offset <= self.labels_upto:
            return False
        if offset >= 0:
            self.labels_upto = offset
        heapq.heappush(self.waiting, (known_at_ms, tx_id, fraud, origin))
        self.changed = True
        return True

    def advance(self, event_ms: int) -> None:
        """A decision at ``event_ms`` moves the partition's event time on."""
        if event_ms > self.watermark_ms:
            self.watermark_ms = event_ms

    def due(self) -> list[WaitingLabel]:
        """The labels whose known_at event time has passed, oldest first, out of the queue."""
        out: list[WaitingLabel] = []
        while self.waiting and self.waiting[0][0] <= self.watermark_ms:
            out.append(heapq.heappop(self.waiting))
        if out:
            self.changed = True
        return out

    def to_state(self) -> dict[str, Any]:
        self.changed = False
        online = None if self.online is None else \
            base64.b64encode(self.online.to_state()).decode("ascii")
        return {"format": STATE_FORMAT, "online": online,
                "evaluator": self.evaluator.label_state(),
                "disparity": self.disparity.to_state(),
                "waiting": [list(w) for w in self.waiting], "watermark_ms": self.watermark_ms,
                "labels_upto": self.labels_upto, "labels_learned": self.labels_learned,
                "labels_unmatched": self.labels_unmatched}

    def drift_state(self) -> dict[str, Any]:
        return self.evaluator.drift_state()

    @classmethod
    def restore(cls, state: Mapping[str, Any] | None, drift: Mapping[str, Any] | None,
                fresh: Callable[[], Learned]) -> Learned:
        """A fresh ``Learned`` (the worker's kinds and settings) with the saved parts put back.
        State of another format, or an online learner another river version wrote, is left out
        (the learner starts afresh) rather than stopping the partition."""
        learned = fresh()
        if state is not None and state.get("format") == STATE_FORMAT:
            if state.get("online") and learned.online is not None:
                try:
                    learned.online = restore_online(base64.b64decode(state["online"]))
                except StateMismatch as exc:
                    log.warning("saved online learner left out, a fresh one learns: %s", exc)
            learned.evaluator.restore_labels(state.get("evaluator", {}))
            learned.disparity = DisparityMonitor.from_state(state.get("disparity", {}),
                                                            learned.disparity.config)
            learned.waiting = [(int(k), str(t), bool(f), str(o))
                               for k, t, f, o in state.get("waiting", ())]
            heapq.heapify(learned.waiting)
            learned.watermark_ms = int(state.get("watermark_ms", 0))
            learned.labels_upto = int(state.get("labels_upto", -1))
            learned.labels_learned = int(state.get("labels_learned", 0))
            learned.labels_unmatched = int(state.get("labels_unmatched", 0))
        if drift is not None:
            learned.evaluator.restore_drift(drift)
        return learned
