"""The terminal stage's gate: a transaction waits until every input partition has handed over the
history its terminal features read (streams.worker.watermarks)."""

from __future__ import annotations

from scoring.features import DAY_MS, LABEL_DELAY_MS
from streams.worker.watermarks import CAUGHT_UP, WatermarkGate

T = 100 * DAY_MS


def full(gate: WatermarkGate, q: int, tx: int, labels: int) -> None:
    gate.update(q, {**{s: tx for s in gate.tx_sources}, **{s: labels for s in gate.label_sources}})


def test_nothing_is_decided_before_every_partition_has_spoken() -> None:
    gate = WatermarkGate(transactions=2, labels=2)
    assert not gate.ready(0, T)
    gate.update(0, {"transactions/0": CAUGHT_UP, "labels/0": CAUGHT_UP, "labels/1": CAUGHT_UP})
    assert not gate.ready(0, T)  # transactions/1 has said nothing
    gate.update(0, {"transactions/1": T})
    assert gate.ready(0, T)


def test_a_transaction_waits_for_the_slowest_partition_to_reach_seven_days_before_it() -> None:
    gate = WatermarkGate(transactions=3, labels=1)
    full(gate, 0, T, CAUGHT_UP)
    gate.update(0, {"transactions/2": T - LABEL_DELAY_MS - 1})
    assert not gate.ready(0, T)
    assert gate.ready(0, T - 1)
    gate.update(0, {"transactions/2": T - LABEL_DELAY_MS})
    assert gate.ready(0, T)


def test_labels_known_by_t_must_have_arrived() -> None:
    gate = WatermarkGate(transactions=1, labels=2)
    full(gate, 0, CAUGHT_UP, T)
    gate.update(0, {"labels/1": T - 1})
    assert not gate.ready(0, T)
    gate.update(0, {"labels/1": CAUGHT_UP})
    assert gate.ready(0, T)


def test_the_latest_word_wins_so_a_new_owner_resuming_lower_holds_again() -> None:
    gate = WatermarkGate(transactions=1, labels=1)
    full(gate, 0, CAUGHT_UP, CAUGHT_UP)
    assert gate.ready(0, T)
    gate.update(0, {"transactions/0": T - 30 * DAY_MS})
    assert not gate.ready(0, T)


def test_partitions_are_gated_apart() -> None:
    gate = WatermarkGate(transactions=1, labels=1)
    full(gate, 0, CAUGHT_UP, CAUGHT_UP)
    assert gate.ready(0, T) and not gate.ready(1, T)
