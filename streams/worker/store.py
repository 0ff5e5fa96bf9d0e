"""Per-partition state in memory, changes coalesced per key, recovered from a compacted changelog.

A store holds one kind of state (the card state, the terminal state) for the partitions this
worker owns: ``partition -> key -> value``, values plain JSON. ``put`` only marks the key dirty; a
checkpoint asks for ``changes()`` and writes one changelog record per changed key, however many
times it changed since the last checkpoint (Faust writes one per update). The changelog partition
number equals the input partition's, so a worker assigned partition p rebuilds its state by
reading changelog partition p to its end (``recover``) before it decides anything.

Why replaying the input on top of recovered state is safe: the changelog may run ahead of the
committed offsets (written in an epoch that crashed before its commit), and the feature state is
idempotent per transaction id (``scoring.features``), so the repeated records change nothing.

    cards = Store("card-state", "rakshit-worker-card-state-changelog")
    cards.put(3, "tok_1", {"features": {...}})
    for partition, key, value in cards.changes(): producer.produce(...)

Keys go too, not just entries: ``expire`` deletes, a bounded number of keys at a time, those
whose newest event has fallen out of use at their partition's event time (``scoring.retention``
says when), and the next checkpoint writes their tombstones, so a restarted worker does not
bring them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

_GONE = object()


def encode_value(value: Any) -> bytes:
    """Compact JSON (orjson: a tenth of the standard library's time for a card's state, which
    every checkpoint writes for every card that changed). Feature state holds no NaN or infinity,
    which orjson would write as null."""
    return orjson.dumps(value)


class Store:
    def __init__(self, name: str, changelog: str) -> None:
        self.name = name
        self.changelog = changelog
        self.partitions: dict[int, dict[str, Any]] = {}
        self._dirty: dict[int, set[str]] = {}
        # Where ``expire`` stopped: (partition, its keys when the pass began, next index).
        self._cursor: tuple[int, list[str], int] | None = None
        self._swept = -1

    def owns(self, partition: int) -> bool:
        return partition in self.partitions

    def table(self, partition: int) -> dict[str, Any]:
        """The partition's key -> value map (read it freely; write through ``put``)."""
        return self.partitions[partition]

    def put(self, partition: int, key: str, value: Any) -> None:
        self.partitions[partition][key] = value
        self._dirty[partition].add(key)

    def delete(self, partition: int, key: str) -> None:
        """Forget ``key``; the next checkpoint writes its tombstone."""
        if self.partitions[partition].pop(key, _GONE) is not _GONE:
            self._dirty[partition].add(key)

    def expire(self, now_ms: Mapping[int, int], expired: Callable[[str, Any, int], bool],
               budget: int) -> list[tuple[int, str]]:
        """Look at up to ``budget`` keys, going on where the last call stopped, and delete each
        that ``expired(key, value, now)`` says has outlived its use at its partition's event
        time ``now_ms[partition]`` (``scoring.retention``); return what went. A partition with no
        event time yet is passed over. A pass over every key takes about keys/budget calls, so
        the checkpoint that calls it pays a bounded price, not one that grows with the state."""
        gone: list[tuple[int, str]] = []
        looked = visited = 0
        while looked < budget and visited <= len(self.partitions):
            if self._cursor is None:
                visited += 1
                partition = self._next_partition(now_ms)
                if partition is None:
                    break
                self._cursor = (partition, list(self.partitions[partition]), 0)
            partition, keys, at = self._cursor
            table = self.partitions.get(partition)
            if table is None or partition not in now_ms:  # revoked meanwhile
                self._cursor = None
                continue
            end = min(len(keys), at + budget - looked)
            now = now_ms[partition]
            for key in keys[at:end]:
                value = table.get(key, _GONE)
                if value is not _GONE and expired(key, value, now):
                    self.delete(partition, key)
                    gone.append((partition, key))
            looked += end - at
            self._cursor = None if end >= len(keys) else (partition, keys, end)
        return gone

    def _next_partition(self, now_ms: Mapping[int, int]) -> int | None:
        """The owned partition after the last one swept, in number order, that has a time."""
        ready = sorted(p for p in self.partitions if p in now_ms)
        if not ready:
            return None
        later = [p for p in ready if p > self._swept]
        self._swept = later[0] if later else ready[0]
        return self._swept

    def changes(self) -> Iterator[tuple[int, str, bytes | None]]:
        """One record per key changed since the last call (None: deleted, a tombstone), then
        forget that they changed."""
        for partition, keys in self._dirty.items():
            table = self.partitions[partition]
            for key in keys:
                value = table.get(key, _GONE)
                yield partition, key, None if value is _GONE else encode_value(value)
            keys.clear()

    def keys(self) -> int:
        return sum(len(t) for t in self.partitions.values())

    def adopt(self, partition: int, table: dict[str, Any]) -> None:
        self.partitions[partition] = table
        self._dirty[partition] = set()

    def drop(self, partition: int) -> None:
        if self._cursor is not None and self._cursor[0] == partition:
            self._cursor = None
        self.partitions.pop(partition, None)
        self._dirty.pop(partition, None)


_RETRIABLE = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT}


def partition_bounds(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """The partition's low and high offsets, asked again while its leadership is still settling
    (a changelog created a moment ago by a worker starting beside this one)."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code not in _RETRIABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _reader(config: dict[str, Any], purpose: str) -> Consumer:
    """A consumer that reads assigned partitions and never commits (its group only names it)."""
    return Consumer({**config, "enable.auto.commit": False,
                     "group.id": f"{config.get('group.id', 'rakshit')}-{purpose}",
                     "enable.partition.eof": False})


def recover(config: dict[str, Any], topic: str, partition: int,
            timeout_s: float = 600.0) -> tuple[dict[str, Any], int, float]:
    """Read changelog partition ``partition`` to its end: (table, records read, seconds).

    A tombstone (no value) deletes its key. Reads with its own consumer and never commits, so the
    changelog is always read from its beginning (compaction keeps it to one record per key).
    """
    started = time.monotonic()
    consumer = _reader(config, "restore")
    table: dict[str, Any] = {}
    read = 0
    try:
        low, high = partition_bounds(consumer, TopicPartition(topic, partition), started + 60.0)
        if high <= low:
            return table, 0, time.monotonic() - started
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = started + timeout_s
        last = low - 1
        loads = orjson.loads
        while last < high - 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recovering {topic}[{partition}]: read {read} records, "
                                   f"stopped at offset {last} of {high} after {timeout_s} s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                read += 1
                last = int(msg.offset() or 0)
                key = msg.key()
                if key is None:
                    continue
                value = msg.value()
                if value is None:
                    table.pop(key.decode(), None)
                else:
                    table[key.decode()] = loads(value)
    finally:
        consumer.close()
    return table, read, time.monotonic() - started


def read_back(config: dict[str, Any], topic: str, starts: dict[int, int],
              timeout_s: float = 120.0) -> tuple[dict[str, bytes], int]:
    """Each key's first value in ``topic`` from ``starts`` (partition -> offset) to the ends the
    partitions had when called: (key -> value, records read). The lane reads its own verdicts
    back this way after a restart (``streams.worker.lane``)."""
    started = time.monotonic()
    consumer = _reader(config, "read-back")
    found: dict[str, bytes] = {}
    read = 0
    try:
        ends: dict[int, int] = {}
        assign = []
        for partition, start in starts.items():
            tp = TopicPartition(topic, partition)
            low, high = partition_bounds(consumer, tp, started + 60.0)
            begin = max(start, low)
            if begin < high:
                ends[partition] = high
                assign.append(TopicPartition(topic, partition, begin))
        if not assign:
            return found, 0
        consumer.assign(assign)
        while ends:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"reading {topic} back: {read} records in {timeout_s} s, "
                                   f"partitions {sorted(ends)} not at their ends")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                read += 1
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                key, value = msg.key(), msg.value()
                if key is not None and value is not None:
                    found.setdefault(key.decode(), value)
                if partition in ends and offset >= ends[partition] - 1:
                    del ends[partition]
    finally:
        consumer.close()
    return found, read
