"""The Kafka transport the worker runs on: Faust's aiokafka driver with one ack rule fixed.

Why this exists (a verdict-loss bug, measured by tests/test_crash.py): when a rebalance starts,
Faust stops the flow and its stream loop *skips* every record still buffered or fetched under the
previous consumer generation, and it acks the skipped record (faust/streams.py, `value is
skipped_value`). An acked offset is committable, so the next commit can move the group's offset
past records nobody processed. Whether those records come back depends on timing: if the commit
lands before the partition is sought back to its committed position, they are gone. A kill -9
restart is exactly such a rebalance, and crash runs lost verdicts this way.

Two rules here, the second a backstop for whatever path we have not found:
- an ack only counts if the record was handed to the agent under the current generation with
  the flow running; any other ack is refused and the record stays uncommitted, so it is
  delivered again (a duplicate verdict with the same verdict_id, which at-least-once allows);
- the committed offset never passes the agents' own watermark: each agent reports an offset as
  finished only after its outputs are with the producer, in order, and a commit is the first
  offset not yet finished. If a record was fetched but never finished (a gap the fetcher did not
  see, so not a transaction marker or a compacted record), the partition is sought back to it and
  it is processed again after a short grace period, instead of the commit moving past it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message, TransportT

from streams.worker import metrics

log = logging.getLogger(__name__)


GAP_GRACE_S = 5.0  # how long a hole below the watermark may stay before the partition is re-read


class GuardedAckConsumer(faust_aiokafka.Consumer):
    """Commits only what the agents finished, in order (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._finished: dict[TP, int] = {}  # tp -> first offset not yet finished
        self._hole_since: dict[TP, float] = {}
        self._fetched: dict[TP, int] = {}  # tp -> offset of the last record fetched
        super().__init__(*args, **kwargs)
        # Faust drops a fetched record whose offset is below the last one it read. After a seek
        # (a rebalance, or our re-read of a hole) records of the old position still in flight
        # raise that mark, and the re-fetched records are then dropped: that is how records were
        # skipped. With no mark, every fetched record reaches the agent; one delivered twice is
        # processed twice (same verdict_id), which at-least-once allows.
        self._read_offset = _NoReadMark()

    def _to_message(self, tp: TP, record: Any) -> Any:
        """Note where the fetched offsets jump: those gaps hold no record (markers, compaction)."""
        offset: int = record.offset
        last = self._fetched.get(tp)
        if last is not None and offset > last + 1:
            self._gap[tp].addi(last + 1, offset)
        self._fetched[tp] = offset
        return super()._to_message(tp, record)

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._fetched[partition] = offset - 1  # so a marker at `offset` is seen as a gap

    # -- the agents' watermark ------------------------------------------------------------------

    def finished(self, tp: TP, offset: int) -> None:
        """An agent finished `offset` of `tp`: its outputs are with the producer."""
        expected = self._finished.get(tp)
        if expected is None:
            committed = self._committed_offset.get(tp)
            # No commit yet for this group: the first record we see is where reading began.
            expected = self._finished[tp] = committed if committed else offset
        if offset == expected:
            self._finished[tp] = offset + 1
            self._hole_since.pop(tp, None)
        elif offset > expected:
            if self._fetcher_skipped(tp, expected, offset):
                self._finished[tp] = offset + 1  # a marker or compacted records: nothing to do
                self._hole_since.pop(tp, None)
            elif tp not in self._hole_since:  # report a hole once, when it opens
                self._hole_since[tp] = time.monotonic()
                metrics.OFFSET_HOLES.labels(tp.topic).inc()
                log.warning("%s[%d]: offset %d finished but %d never was; commits hold at %d",
                            tp.topic, tp.partition, offset, expected, expected)
        # offset < expected: a record delivered again after a seek; nothing moves

    def _fetcher_skipped(self, tp: TP, start: int, end: int) -> bool:
        """Whether the fetcher saw no record in [start, end): Faust records those gaps."""
        gaps = self._gap.get(tp)
        if not gaps:
            return False
        covered = gaps.overlap(start, end)
        need = set(range(start, end))
        for interval in covered:
            need.difference_update(range(interval.begin, interval.end))
        return not need

    def _new_offset(self, tp: TP) -> int | None:
        """Commit up to the agents' watermark; Faust's ack list only says what may be dropped."""
        watermark = self._finished.get(tp)
        acked = self._acked.get(tp)
        if acked and watermark is not None:
            below = [o for o in acked if o < watermark]
            if below:
                acked[:] = [o for o in acked if o >= watermark]
                self._acked_index[tp].difference_update(below)
        if watermark is None:
            return None
        gaps = self._gap.get(tp)
        if gaps:
            gaps.chop(0, watermark)
        committed = self._committed_offset.get(tp)
        return watermark if committed is None or watermark > committed else None

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        await self._reread_holes()
        return bool(await super().commit(*args, **kwargs))

    async def _reread_holes(self) -> None:
        now = time.monotonic()
        for tp, since in list(self._hole_since.items()):
            if now - since < GAP_GRACE_S or tp not in self.assignment():
                continue
            offset = self._finished[tp]
            log.warning("%s[%d]: re-reading from %d, never finished", tp.topic, tp.partition,
                        offset)
            metrics.OFFSET_REREADS.labels(tp.topic).inc()
            self._hole_since.pop(tp, None)
            await self.seek(tp, offset)

    async def perform_seek(self) -> None:
        """After a rebalance, each partition's watermark restarts at its committed offset."""
        await super().perform_seek()
        self._finished.clear()
        self._hole_since.clear()
        self._fetched.clear()
        for tp, offset in self._committed_offset.items():
            if offset is not None:
                self._fetched[tp] = offset - 1

    # -- acks -----------------------------------------------------------------------------------

    def ack(self, message: Message) -> bool:
        app = self.app
        generation = message.generation_id
        stale = generation is not None and generation != app.consumer_generation_id
        if stale or not app.flow_control.is_active():
            if not message.acked:
                message.acked = True  # never counted later either
                self._unacked_messages.discard(message)
                metrics.ACKS_REFUSED.labels(message.topic).inc()
                log.warning("ack refused for %s[%d]@%d: %s; it will be delivered again",
                         message.topic, message.partition, message.offset,
                         "stale generation" if stale else "flow stopped")
            return False
        return bool(super().ack(message))


class _NoReadMark(dict[TP, int | None]):
    """Faust's last-read mark, always empty: see GuardedAckConsumer.__init__."""

    def __getitem__(self, tp: TP) -> None:
        return None

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        pass


class DrainingProducer(faust_aiokafka.Producer):
    """Flushes what Faust's own buffer held when the commit began, not for at most 0.1 s.

    Faust flushes the producer before it commits offsets, but its buffer of table-changelog
    writes gives up after 0.1 s without progress (ProducerBuffer.flush_atmost), so under load a
    commit could cover records whose state updates were still unsent, and a crash then lost
    those updates. Waiting here stalls the commit instead.
    """

    async def flush(self) -> None:
        # Only what was buffered when the commit began: waiting for the buffer to be empty
        # stalled the worker under load, since the agents keep adding to it.
        target, sent = self.buffer.size, 0
        while sent < target and self.buffer.size:
            sent += await self.buffer.flush_atmost(target - sent)
        await super().flush()


class GuardedTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[Any]] = GuardedAckConsumer
    Producer: ClassVar[type[Any]] = DrainingProducer


class App(faust.App):
    """faust.App whose consumer transport is the guarded one."""

    def _new_transport(self) -> TransportT:
        return GuardedTransport(self.conf.broker_consumer, self)


async def finishing(app: faust.App, stream: faust.StreamT[Any]) -> AsyncIterator[EventT[Any]]:
    """The stream's events; each is reported finished once the loop body is done with it.

    The code after `yield` runs when the agent asks for the next event, i.e. after its body
    completed, `continue` included. A body that raises never reports its event finished.
    """
    async for event in stream.events():
        yield event
        mark_finished(app, event)


def mark_finished(app: faust.App, event: EventT[Any]) -> None:
    """Report an event finished: its outputs are with the producer (see GuardedAckConsumer)."""
    consumer = app.consumer
    if isinstance(consumer, GuardedAckConsumer):
        message = event.message
        consumer.finished(message.tp, message.offset)
