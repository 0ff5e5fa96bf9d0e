"""`rakshit worker`: the fraud lane, and the Faust app for the routing loop and the case book.

Transactions, labels and authorization outcomes are processed by the fraud lane
(streams.worker.lane), started here in a thread of the same process; its outbox commits an offset
only once the broker has acknowledged every output before it. Faust runs only what its per-event
cost does not matter to: the Analyst and Pilot (streams.worker.routing) and the case book
(streams.worker.casework), each agent at concurrency 1 (more can commit past a record still in
flight, faust-streaming #606) on the guarded transport (streams.worker.transport). At-least-once
throughout: a crash repeats records, never skips one (tests/test_crash.py, with kill -9).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
from confluent_kafka import KafkaException

from agents.routing.baseline import load_baseline
from schemas.codec import make_codec
from streams.config import Settings
from streams.launcher import StartupFailed, serve_metrics
from streams.topics import DEAD_LETTER_MAX_BYTES, Topic, topic_name
from streams.worker import metrics
from streams.worker.admission import Output, Processor, Source, internal_error
from streams.worker.casework import DEPTH_EVERY_S, CaseStage
from streams.worker.lane import start_lane
from streams.worker.routing import RoutingStage
from streams.worker.transport import App, finishing
from streams.worker.write_behind import WriteBehind

log = logging.getLogger(__name__)

def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(","))


def _broker_credentials(settings: Settings) -> faust.SASLCredentials | None:
    """The worker's SASL/SCRAM login for aiokafka, when the broker wants one."""
    if not settings.kafka_secured:
        return None
    return faust.SASLCredentials(username=settings.kafka_user,
                                 password=settings.kafka_password(),
                                 mechanism=faust.types.auth.SASLMechanism.SCRAM_SHA_512)


def _faust_app(settings: Settings) -> faust.App:
    datadir = settings.home / "worker" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return App(
        settings.app_id,
        broker=_broker_url(settings.bootstrap_servers),
        broker_credentials=_broker_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        processing_guarantee=settings.processing_guarantee,
        broker_commit_interval=settings.commit_interval_s,
        # A killed worker's partitions are reassigned only when its session expires; Faust's 60 s
        # default would stall verdicts for a minute after a crash.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=DEAD_LETTER_MAX_BYTES + 64 * 1024,
        topic_partitions=settings.default_partitions,
        topic_replication_factor=1,
        web_enabled=False,
    )


def _add_ops(app: faust.App, settings: Settings,
             lane_ready: Callable[[], bool] = lambda: True) -> None:
    """Readiness and the metrics endpoint, shared by the worker and the benchmark baseline."""

    @app.task  # type: ignore[untyped-decorator]
    async def metrics_endpoint() -> None:
        serve_metrics(settings)  # run_worker (and `rakshit worker` before it) serves them first

    @app.timer(interval=0.25)  # type: ignore[untyped-decorator]
    async def report_ready() -> None:
        # A stable consumer group is not enough: until changelog recovery finishes the worker
        # fetches nothing, and traffic sent then waits.
        recovery = app.tables.recovery  # type: ignore[attr-defined]  # the TableManager's own
        recovered = recovery.completed.is_set() and not recovery.in_recovery
        ready = recovered and not app.rebalancing and lane_ready()
        metrics.WORKER_READY.set(1 if ready else 0)


def create_app(settings: Settings, lane_ready: Callable[[], bool] = lambda: True) -> faust.App:
    """The Faust frame: the routing loop and the case book, where Faust's per-event cost is
    nothing beside their rate. Transactions, labels and outcomes are the fraud lane's
    (streams.worker.lane), which runs beside this app in the same process."""
    app = _faust_app(settings)
    codec = make_codec(settings.schema_registry_url)
    admission = Processor(settings, codec)

    def raw_topic(topic: Topic) -> faust.TopicT:
        return app.topic(topic_name(topic, settings.topic_prefix), key_type=bytes,
                         value_type=bytes, key_serializer="raw", value_serializer="raw")

    outputs = {topic_name(t, settings.topic_prefix): raw_topic(t)
               for t in (Topic.DECISIONS, Topic.DEAD_LETTERS, Topic.HYPOTHESES,
                         Topic.EXPERIMENTS, Topic.ROUTING_POLICY, Topic.CASES,
                         Topic.WHITELIST, Topic.LABELS, Topic.AUDIT, Topic.NOTIFICATIONS,
                         Topic.REVIEW_QUEUE)}
    # The routing loop's state lives on the one partition of its topics (see streams.topics),
    # worked on in memory and checkpointed each second (streams.worker.write_behind).
    analyst_state = WriteBehind(app.Table("analyst-cells", default=dict, partitions=1))
    pilot_state = WriteBehind(app.Table("pilot-state", default=dict, partitions=1))
    routing = RoutingStage(codec, settings.topic_prefix, load_baseline(settings.routing_baseline),
                           analyst_state, pilot_state)
    # Case state: one partition, written on each command (commands are rare; durability wins).
    cases = CaseStage(codec, settings.topic_prefix, app.Table("case-book", partitions=1))
    # The API's commands and the lane's OPENs (streams.worker.casework: one writer each).
    case_commands = app.topic(topic_name(Topic.CASE_COMMANDS, settings.topic_prefix),
                              topic_name(Topic.CASE_OPENINGS, settings.topic_prefix),
                              key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw")
    hypotheses_name = topic_name(Topic.HYPOTHESES, settings.topic_prefix)
    routing_inputs = app.topic(topic_name(Topic.ROUTE_OUTCOMES, settings.topic_prefix),
                               hypotheses_name, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")
    processed: dict[tuple[str, int], int] = {}

    async def send(out: Output) -> None:
        """Hand a record to the producer, retrying until it is accepted.

        An exception escaping an agent makes Faust ack the record in hand, and the next commit
        then skips it: a command without its outcome. So a send that fails is retried with
        capped backoff (the partition stalls, its lag metric grows) rather than raised.
        """
        delay = 0.05
        while True:
            try:
                await outputs[out.topic].send(key=out.key, value=out.value)
                break
            except Exception:
                metrics.SEND_RETRIES.labels(out.topic).inc()
                log.exception("send to %s failed; retrying in %.2f s", out.topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        metrics.EVENTS_OUT.labels(out.topic).inc()

    def source_of(event: Any) -> Source:
        msg = event.message
        processed[(msg.topic, msg.partition)] = msg.offset
        ts = msg.timestamp * 1000.0 if msg.timestamp is not None else None
        return Source(msg.topic, msg.partition, msg.offset, msg.key, ts)

    @app.agent(case_commands, name="cases", concurrency=1)
    async def case_agent(stream: faust.StreamT[bytes]) -> None:
        """The case book's single writer: commands applied in log order
        (streams.worker.casework)."""
        async for event in finishing(app, stream):
            source = source_of(event)
            raw = event.message.value or b""
            try:
                outs = cases.on_command(raw, event.message.topic)
            except Exception as exc:  # keep the command and the reason; the queue keeps moving
                log.exception("case command failed")
                outs = [admission.dead_letter(raw, source, internal_error(exc))]
            for out in outs:
                await send(out)

    @app.timer(interval=DEPTH_EVERY_S)  # type: ignore[untyped-decorator]
    async def publish_queue_depth() -> None:
        """The last depth change of a burst of commands, which the rate limit held back."""
        for out in cases.queue_depth():
            await send(out)

    @app.agent(routing_inputs, name="routing", concurrency=1)
    async def routing_agent(stream: faust.StreamT[bytes]) -> None:
        """The Analyst on outcomes, the Pilot on outcomes and on the hypotheses topic."""
        async for event in finishing(app, stream):
            source = source_of(event)
            raw = event.message.value or b""
            try:
                if event.message.topic == hypotheses_name:
                    outs = routing.on_hypothesis(raw)
                else:
                    outs = routing.on_outcomes(raw)
            except Exception as exc:  # keep the record and the reason, keep the loop running
                log.exception("routing failed on %s", event.message.topic)
                outs = [admission.dead_letter(raw, source, internal_error(exc))]
            for out in outs:
                await send(out)
            analyst_state.flush_if_due()
            pilot_state.flush_if_due()

    _add_ops(app, settings, lane_ready)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet: no figure is better than a wrong one
                continue
            if high is None:
                continue
            done = processed.get((tp.topic, tp.partition), -1) + 1
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - done))

    return app


def create_passthrough_app(settings: Settings) -> faust.App:
    """The benchmark's baseline: the same Faust client, guarantee and topics, and no work.

    Each transaction is forwarded unchanged to the decision topic, so `rakshit bench pipeline`
    can say what share of Faust-on-Kafka's own ceiling the real worker reaches.
    """
    app = _faust_app(settings)
    source = app.topic(topic_name(Topic.TRANSACTIONS, settings.topic_prefix), key_type=bytes,
                       value_type=bytes, key_serializer="raw", value_serializer="raw")
    sink = app.topic(topic_name(Topic.DECISIONS, settings.topic_prefix), key_type=bytes,
                     value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="passthrough", concurrency=1)
    async def passthrough(stream: faust.StreamT[bytes]) -> None:
        async for event in finishing(app, stream):
            await sink.send(key=event.message.key, value=event.message.value)

    _add_ops(app, settings)
    return app


def run_worker(settings: Settings, loglevel: str = "info", passthrough: bool = False) -> None:
    """Block running the worker until it is stopped (SIGTERM/SIGINT)."""
    from streams.admin import ensure_topics

    serve_metrics(settings)
    try:
        ensure_topics(settings)  # the first request that needs rights on the cluster
    except KafkaException as exc:
        raise StartupFailed(f"cannot check or create the topics at {settings.bootstrap_servers}: "
                            f"{exc.args[0] if exc.args else exc}") from exc
    if passthrough:
        app = create_passthrough_app(settings)
        lane = None
    else:
        lane, thread = start_lane(settings)
        app = create_app(settings, lambda: lane.ready)
    worker = _Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        if lane is not None:  # the lane's last checkpoint: everything done is committed
            lane.stop()
            thread.join(timeout=60)


class _Worker(faust.Worker):
    """Faust's worker without its terminal spinner.

    The spinner hooks a DEBUG-level handler onto the root logger, which makes aiokafka and faust
    build a debug record for every message sent (CPU py-spy finds in every profile of the worker)
    and writes terminal escape codes into log files.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        for noisy in ("aiokafka", "faust.topics"):
            logging.getLogger(noisy).setLevel(max(level, logging.INFO))
        # A refused ack is rare and worth seeing whatever the level (streams.worker.transport),
        # and so are a partition's recovery and the verdicts read back after a restart (lane).
        for rare in ("streams.worker.transport", "streams.worker.lane"):
            logging.getLogger(rare).setLevel(logging.INFO)
