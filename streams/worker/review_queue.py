"""The review queue's depth as the fraud lane reads it, for thresholds that adapt to it.

The case book lives with the case agent (Faust, ``streams.worker.casework``), which publishes the
number of unresolved cases to the compacted ``rakshit.review-queue`` topic when it changes. The
decisions are made by the lanes, each deciding any card's payment at its terminal partitions, so
every lane reads the whole topic outside its consumer group (a global table, as the whitelist is)
and puts the depth, with the configured capacity (``RAKSHIT_REVIEW_CAPACITY``), in each
decision's context: the review threshold rises as the queue fills (``agents.fraud.decision``).

The topic is read to its end before the lane joins its group, so a restarted worker decides with
the queue as it was, then followed between batches. The depth a decision sees is up to a second
or two old (the case agent's rate limit plus the lane's poll interval): thresholds that move in
seconds rather than milliseconds are all a queue that analysts drain in minutes asks for.
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from schemas.codec import Codec, DecodeError
from streams.worker import metrics
from streams.worker.stages import QueueLoad
from streams.worker.whitelist import GlobalTable

log = logging.getLogger(__name__)


class ReviewQueueFeed(GlobalTable):
    """The latest depth in ``load.depth``; ``load.capacity`` is the configured capacity."""

    def __init__(self, codec: Codec, topic: str, capacity: int) -> None:
        super().__init__(codec, topic)
        self.load = QueueLoad(0, capacity)

    def _apply(self, msg: Message) -> None:
        if msg.error() is not None:
            log.warning("review-queue consumer error: %s", msg.error())
            return
        value = msg.value()
        if value is None:  # nobody deletes it; an empty queue is the safe reading
            self.load.depth = 0
        else:
            try:
                rec = self.codec.decode(value, topic=self.topic, expect="review_queue").record
            except DecodeError:  # the case agent wrote it, so a bug: say so, keep the last depth
                log.exception("unreadable review-queue depth at %s[%s]@%s", self.topic,
                              msg.partition(), msg.offset())
                return
            self.load.depth = int(rec["depth"])
        metrics.REVIEW_QUEUE_SEEN.set(self.load.depth)
