"""Offsets are committed only once everything sent before them is acknowledged
(streams.worker.outbox). The producer here is a recorder of delivery callbacks, so the rule is
checked without a broker; tests/test_crash.py checks it through one with kill -9."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streams.worker.outbox import DeliveryFailed, Outbox


class _Err:
    def str(self) -> str:
        return "Broker: timed out"


class _Msg:
    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0


class RecordingProducer:
    def __init__(self) -> None:
        self.pending: list[Callable[[Any, Any], None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, partition: int,
                on_delivery: Callable[[Any, Any], None]) -> None:
        self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def ack(self, n: int, error: bool = False) -> None:
        for cb in self.pending[:n]:
            cb(_Err() if error else None, _Msg())
        del self.pending[:n]

    def flush(self, timeout: float = 0) -> int:
        self.ack(len(self.pending))
        return 0


def test_an_epoch_commits_only_after_all_its_records_are_acknowledged() -> None:
    producer = RecordingProducer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    outbox.send("t", b"k", b"v1")
    outbox.send("t", b"k", b"v2")
    outbox.close_epoch({("in", 0): 2})
    assert outbox.committable() == {}
    producer.ack(1)
    assert outbox.committable() == {}
    producer.ack(1)
    assert outbox.committable() == {("in", 0): 2}
    assert outbox.committable() == {}


def test_a_younger_epoch_waits_for_an_older_one() -> None:
    producer = RecordingProducer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    outbox.send("t", b"k", b"old")
    outbox.close_epoch({("in", 0): 1})
    outbox.close_epoch({("in", 0): 1, ("in", 1): 5})  # nothing sent: acknowledged at once
    assert outbox.committable() == {}
    producer.ack(1)
    assert outbox.committable() == {("in", 0): 1, ("in", 1): 5}


def test_a_failed_delivery_never_commits() -> None:
    producer = RecordingProducer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    outbox.send("t", b"k", b"v")
    outbox.close_epoch({("in", 0): 1})
    producer.ack(1, error=True)
    with pytest.raises(DeliveryFailed, match="timed out"):
        outbox.committable()


def test_drain_waits_for_every_delivery() -> None:
    producer = RecordingProducer()
    outbox = Outbox(producer)  # type: ignore[arg-type]
    outbox.send("t", b"k", b"v")
    outbox.close_epoch({("in", 3): 9})
    assert outbox.drain() == {("in", 3): 9}
