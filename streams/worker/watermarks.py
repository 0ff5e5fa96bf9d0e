"""When the terminal stage may decide: once the history its features read has arrived.

Terminal features at event time t read the terminal's transactions in (t-37d, t-7d] and the labels
known by t (``scoring.features``). Those reach a terminal partition from every card partition, and
one card partition can lag another by minutes of wall time, which a replay turns into days of
event time. So each card stage tells every terminal partition, with a WATERMARK event, how far in
event time it has handed over each input partition it owns (for labels: their ``known_at``), or
that the partition is consumed to its end (``CAUGHT_UP``: nothing older can follow). A transaction
at t is decided only when every transactions partition has reached t - 7 days and every labels
partition has reached t; until then it waits, in arrival order. Features are then a function of
event time alone, whatever the partitions' relative lag. Live traffic runs days ahead of what the
gate needs, so nothing waits.

    gate = WatermarkGate(transactions=6, labels=6)
    gate.update(q, {"transactions/0": t0, ..., "labels/5": CAUGHT_UP})
    gate.ready(q, t_ms)
"""

from __future__ import annotations

from collections.abc import Mapping

from scoring.features import LABEL_DELAY_MS

CAUGHT_UP = 2**63 - 1
UNKNOWN = -(2**63)


def source(topic_kind: str, partition: int) -> str:
    return f"{topic_kind}/{partition}"


class WatermarkGate:
    def __init__(self, transactions: int, labels: int) -> None:
        self.tx_sources = tuple(source("transactions", p) for p in range(transactions))
        self.label_sources = tuple(source("labels", p) for p in range(labels))
        self._marks: dict[int, dict[str, int]] = {}
        self._low: dict[int, tuple[int, int]] = {}

    def update(self, partition: int, marks: Mapping[str, int]) -> None:
        """The latest word of the sender on each source wins (a new owner resumes lower)."""
        table = self._marks.setdefault(partition, {})
        table.update(marks)
        self._low[partition] = (min(table.get(s, UNKNOWN) for s in self.tx_sources),
                                min(table.get(s, UNKNOWN) for s in self.label_sources))

    def low(self, partition: int) -> tuple[int, int]:
        """(transactions, labels) watermarks of the terminal partition: the slowest source's."""
        return self._low.get(partition, (UNKNOWN, UNKNOWN))

    def ready(self, partition: int, t_ms: int) -> bool:
        tx_low, label_low = self._low.get(partition, (UNKNOWN, UNKNOWN))
        return tx_low >= t_ms - LABEL_DELAY_MS and label_low >= t_ms
