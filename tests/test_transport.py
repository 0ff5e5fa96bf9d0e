"""The worker's commit rules (streams/worker/transport.py), without a broker: a record the
agents did not finish is never committed, a skipped one is read again, and a gap the fetcher saw is
no hole."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.worker import transport
from streams.worker.transport import App, GuardedAckConsumer

TOPIC = "guarded-ack"
TP0 = TP(TOPIC, 0)


@pytest.fixture
def app() -> Iterator[App]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = App("test-guarded-ack", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.topics.acking_topics.add(TOPIC)  # as for an agent's topic: acks count towards commits
    app.consumer_generation_id = 7
    app.flow_control.resume()
    yield app
    asyncio.set_event_loop(None)
    loop.close()


def consumer(app: App) -> GuardedAckConsumer:
    c = app.consumer
    assert isinstance(c, GuardedAckConsumer)
    return c


def delivered(app: App, offset: int, generation: int = 7) -> ConsumerMessage:
    m = ConsumerMessage(TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None,
                        generation_id=generation, tp=TP0)
    app.consumer.track_message(m)
    return m


def process(app: App, offset: int) -> None:
    """What an agent does with a record: finish it (outputs sent), then Faust acks it."""
    m = delivered(app, offset)
    consumer(app).finished(TP0, offset)
    m.ack(app.consumer)


def test_finished_records_become_committable(app: App) -> None:
    for offset in range(3):
        process(app, offset)
    assert consumer(app)._new_offset(TP0) == 3


def test_an_acked_record_no_agent_finished_is_never_committed(app: App) -> None:
    process(app, 0)
    delivered(app, 1).ack(app.consumer)  # acked (e.g. skipped by Faust) but never finished
    process(app, 2)
    # Faust alone would commit 3 here, covering offset 1 that nobody processed.
    assert consumer(app)._new_offset(TP0) == 1


def test_a_record_from_the_previous_generation_does_not_count(app: App) -> None:
    process(app, 0)
    stale = delivered(app, 1, generation=6)  # fetched before the rebalance, skipped after it
    assert stale.ack(app.consumer) is False
    assert stale not in app.consumer.unacked  # a rebalance does not wait for it either
    assert consumer(app)._new_offset(TP0) == 1


def test_a_record_acked_while_the_flow_is_stopped_does_not_count(app: App) -> None:
    process(app, 0)
    in_hand = delivered(app, 1)
    app.flow_control.suspend()  # a rebalance began while offset 1 was being handled
    assert in_hand.ack(app.consumer) is False


def test_a_hole_is_read_again_after_the_grace_period(app: App,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    c = consumer(app)
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(c, "seek", seek)
    monkeypatch.setattr(c, "assignment", lambda: {TP0})
    process(app, 0)
    process(app, 2)  # offset 1 never finished
    asyncio.get_event_loop().run_until_complete(c._reread_holes())
    assert sought == []  # within the grace period: it may still be on its way
    monkeypatch.setattr(transport, "GAP_GRACE_S", 0.0)
    asyncio.get_event_loop().run_until_complete(c._reread_holes())
    assert sought == [(TP0, 1)]
    process(app, 1)  # delivered again and finished: the watermark moves on
    process(app, 2)
    assert c._new_offset(TP0) == 3


def test_a_gap_the_fetcher_saw_is_not_a_hole(app: App) -> None:
    c = consumer(app)
    process(app, 0)
    c._gap[TP0].addi(1, 3)  # offsets 1-2: a transaction marker or compacted away
    process(app, 3)
    assert c._new_offset(TP0) == 4


class _Record:
    """The fields of an aiokafka ConsumerRecord that Faust's driver reads."""

    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TOPIC, 0, offset
        self.timestamp, self.timestamp_type = 0, 0
        self.headers: list[tuple[str, bytes]] = []
        self.key, self.value, self.checksum = b"k", b"v", None
        self.serialized_key_size = self.serialized_value_size = 1


def test_a_jump_in_fetched_offsets_is_a_gap_not_a_hole(app: App) -> None:
    c = consumer(app)
    for offset in (0, 1, 4):  # 2 and 3 never came from the broker: markers or compacted
        c._to_message(TP0, _Record(offset))
    process(app, 0)
    process(app, 1)
    process(app, 4)
    assert c._new_offset(TP0) == 5


def test_records_fetched_again_after_a_seek_reach_the_agent(app: App) -> None:
    """Faust drops a record below its last-read mark; after a seek that dropped the records we
    went back for. The guarded consumer keeps no such mark."""
    c = consumer(app)
    c._read_offset[TP0] = 600  # what the drain loop writes for a batch of the old position
    assert c._read_offset[TP0] is None
