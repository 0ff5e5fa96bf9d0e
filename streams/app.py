"""The Faust worker: topics in, verdicts and dead letters out.

Processing guarantee: at-least-once, with every agent at concurrency 1.
- Faust flushes the producer before it commits consumer offsets, so an offset is only committed
  after the verdicts of the records before it have been acknowledged by the broker: a crash can
  repeat work but never skip a transaction.
- concurrency > 1 can commit past a record still in flight (faust-streaming issue #606), and
  faust's exactly_once mode has open reports of duplicates and sends outside the transaction
  (#177, #323, #517): we do not rely on either.
- What a crash costs: the records processed after the last commit (at most commit_interval_s of
  traffic, 1 s by default) are processed again. Their verdicts are re-issued with the same
  verdict_id, and the velocity state is idempotent per transaction id, so the repeat carries the
  same decision. Consumers dedupe on transaction_id (the record key). tests/test_crash.py measures
  this with kill -9.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import faust
from prometheus_client import start_http_server

from schemas.codec import make_codec
from scoring import features as F
from streams import metrics
from streams.casework import CaseStage
from streams.config import Settings
from streams.models import build_pipeline
from streams.processing import (
    Admitted,
    Output,
    Processor,
    Source,
    event_millis,
    internal_error,
)
from streams.routing import RoutingStage, load_baseline
from streams.stages import CardStage, TerminalStage
from streams.state import WriteBehind
from streams.topics import DEAD_LETTER_MAX_BYTES, Topic, topic_name
from streams.transport import App, finishing, mark_finished

log = logging.getLogger(__name__)

OUTCOME_BATCH = 500  # outcomes per record on the routing topic, at most
OUTCOME_BATCH_WITHIN_S = 0.05  # ... or what arrived within this long


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(","))


def _faust_app(settings: Settings) -> faust.App:
    datadir = settings.home / "worker" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return App(
        settings.app_id,
        broker=_broker_url(settings.bootstrap_servers),
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


def _add_ops(app: faust.App, settings: Settings) -> None:
    """Readiness and the metrics endpoint, shared by the worker and the benchmark baseline."""

    @app.task  # type: ignore[untyped-decorator]
    async def serve_metrics() -> None:
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.metrics_addr)

    @app.timer(interval=0.25)  # type: ignore[untyped-decorator]
    async def report_ready() -> None:
        # A stable consumer group is not enough: until changelog recovery finishes the worker
        # fetches nothing, and traffic sent then waits.
        recovery = app.tables.recovery  # type: ignore[attr-defined]  # the TableManager's own
        recovered = recovery.completed.is_set() and not recovery.in_recovery
        metrics.WORKER_READY.set(1 if recovered and not app.rebalancing else 0)


def create_app(settings: Settings) -> faust.App:
    app = _faust_app(settings)
    codec = make_codec(settings.schema_registry_url)
    admission = Processor(settings, codec)
    card_stage = CardStage(codec, settings.topic_prefix)
    terminal_stage = TerminalStage(codec, build_pipeline(settings), settings.topic_prefix)

    def raw_topic(topic: Topic) -> faust.TopicT:
        return app.topic(topic_name(topic, settings.topic_prefix), key_type=bytes,
                         value_type=bytes, key_serializer="raw", value_serializer="raw")

    transactions = raw_topic(Topic.TRANSACTIONS)
    outcomes = raw_topic(Topic.AUTH_OUTCOMES)
    labels = raw_topic(Topic.LABELS)
    scoring = raw_topic(Topic.SCORING)
    outputs = {topic_name(t, settings.topic_prefix): raw_topic(t)
               for t in (Topic.DECISIONS, Topic.DEAD_LETTERS, Topic.SCORING,
                         Topic.ROUTE_OUTCOMES, Topic.HYPOTHESES, Topic.EXPERIMENTS,
                         Topic.ROUTING_POLICY, Topic.CASE_COMMANDS, Topic.CASES, Topic.LABELS,
                         Topic.AUDIT, Topic.NOTIFICATIONS)}
    # Changelogged state, recovered before a restarted worker processes anything. Card state
    # lives on the card's partition, terminal state on the terminal's (see streams.stages).
    card_table = app.Table("card-state", default=dict, partitions=settings.default_partitions)
    terminal_table = app.Table("terminal-state", default=dict,
                               partitions=settings.default_partitions)
    # The routing loop's state lives on the one partition of its topics (see streams.topics),
    # worked on in memory and checkpointed each second (streams.state).
    analyst_state = WriteBehind(app.Table("analyst-cells", default=dict, partitions=1))
    pilot_state = WriteBehind(app.Table("pilot-state", default=dict, partitions=1))
    routing = RoutingStage(codec, settings.topic_prefix, load_baseline(settings.routing_baseline),
                           analyst_state, pilot_state)
    # Case state: one partition, written on each command (commands are rare; durability wins).
    cases = CaseStage(codec, settings.topic_prefix, app.Table("case-book", partitions=1))
    case_commands = raw_topic(Topic.CASE_COMMANDS)
    hypotheses_name = topic_name(Topic.HYPOTHESES, settings.topic_prefix)
    routing_inputs = app.topic(topic_name(Topic.ROUTE_OUTCOMES, settings.topic_prefix),
                               hypotheses_name, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")
    processed: dict[tuple[str, int], int] = {}

    async def send(out: Output) -> None:
        """Hand a record to the producer, retrying until it is accepted.

        An exception escaping an agent makes Faust ack the record in hand, and the next commit
        then skips it: a transaction without a verdict. So a send that fails is retried with
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

    @app.agent(transactions, name="card-stage", concurrency=1)
    async def card_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in finishing(app, stream):
            received = time.time()
            source = source_of(event)
            admitted = admission.admit(event.message.value, source, "transaction")
            if not isinstance(admitted, Admitted):
                await send(admitted)
                continue
            tx = admitted.record
            card = tx["card_token"]
            try:
                stored = card_table[card]
                state, amounts, row = card_stage.features(stored.get("features") or None, tx,
                                                          stored.get("amounts", []),
                                                          stored.get("outcomes"))
                card_table[card] = {**stored, "features": state, "amounts": amounts}
                stale = None
            except Exception:  # the feature store failed: decide on what we last knew
                log.exception("card state unavailable for a transaction; using cached features")
                metrics.FEATURE_STORE_ERRORS.inc()
                cached = card_stage.cached(card)
                row, stale = (cached[0], received - cached[1]) if cached else ({}, 1e9)
                amounts = []
            await send(card_stage.hand_over(tx, row, amounts, source, received, stale))

    @app.agent(labels, name="label-stage", concurrency=1)
    async def label_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in finishing(app, stream):
            admitted = admission.admit(event.message.value, source_of(event), "label")
            if not isinstance(admitted, Admitted):
                await send(admitted)
                continue
            out = card_stage.forward_label(admitted.record)
            if out is None:
                metrics.LABELS_WITHOUT_TERMINAL.inc()
            else:
                await send(out)

    @app.agent(scoring, name="terminal-stage", concurrency=1)
    async def terminal_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in finishing(app, stream):
            started = time.time()
            source = source_of(event)
            raw = event.message.value or b""
            try:
                scoring_event = terminal_stage.decode(raw)
            except Exception as exc:  # our own topic, so a bug: keep the record, say why
                await send(admission.dead_letter(raw, source, internal_error(exc)))
                continue
            terminal = scoring_event["terminal_id"]
            try:
                state = terminal_table[terminal] or None
                if scoring_event["kind"] == "LABEL":
                    terminal_table[terminal] = terminal_stage.observe_label(state, scoring_event)
                    continue
                state, verdict = terminal_stage.decide(state, scoring_event, started)
                terminal_table[terminal] = state
            except Exception:
                log.exception("terminal state failed; deciding without features")
                metrics.FEATURE_STORE_ERRORS.inc()
                try:
                    verdict = terminal_stage.decide_without_state(scoring_event, started)
                except Exception as again:
                    verdict = admission.dead_letter(raw, source, internal_error(again))
            await send(verdict)
            for follow_up in verdict.follow_ups:
                await send(follow_up)
            if verdict.opens_case:
                await send(cases.open_case(verdict, datetime.now(UTC)))

    # Outcomes: each one updates its card's decline history (the card's partition: outcomes are
    # keyed by card like transactions) and joins a batch for the routing agent. An outcome counts
    # as finished only once its batch is with the producer, so a crash never skips one.
    batch: list[bytes] = []
    batch_events: list[Any] = []
    batch_started = [0.0]

    async def flush_outcomes() -> None:
        if not batch_events:
            return
        raws, events = list(batch), list(batch_events)
        batch.clear()
        batch_events.clear()
        if raws:
            await send(routing.hand_over(raws))
        for done in events:  # in offset order, dead-lettered ones included
            mark_finished(app, done)

    @app.agent(outcomes, name="observe-outcomes", concurrency=1)
    async def observe_outcomes(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            raw = event.message.value or b""
            admitted = admission.admit(raw, source_of(event), "authorization_outcome")
            if not batch_events:
                batch_started[0] = time.monotonic()
            if not isinstance(admitted, Admitted):
                await send(admitted)
                batch_events.append(event)  # after its dead letter is with the producer
                continue
            rec = admitted.record
            try:
                stored = card_table[rec["card_token"]]
                card_table[rec["card_token"]] = {**stored, "outcomes": F.card_outcome_observe(
                    stored.get("outcomes"), rec["transaction_id"], event_millis(rec),
                    rec["result"])}
            except Exception:  # the feature store failed: routing still gets the outcome
                log.exception("card state unavailable for an outcome")
                metrics.FEATURE_STORE_ERRORS.inc()
            batch.append(raw)
            batch_events.append(event)
            if (len(batch_events) >= OUTCOME_BATCH
                    or time.monotonic() - batch_started[0] >= OUTCOME_BATCH_WITHIN_S):
                await flush_outcomes()

    @app.timer(interval=OUTCOME_BATCH_WITHIN_S)  # type: ignore[untyped-decorator]
    async def flush_outcome_batch() -> None:
        """A lull must not hold outcomes back from the routing agent."""
        if batch_events and time.monotonic() - batch_started[0] >= OUTCOME_BATCH_WITHIN_S:
            await flush_outcomes()

    @app.agent(case_commands, name="cases", concurrency=1)
    async def case_agent(stream: faust.StreamT[bytes]) -> None:
        """The case book's single writer: commands applied in log order (see streams.casework)."""
        async for event in finishing(app, stream):
            source = source_of(event)
            raw = event.message.value or b""
            try:
                outs = cases.on_command(raw)
            except Exception as exc:  # keep the command and the reason; the queue keeps moving
                log.exception("case command failed")
                outs = [admission.dead_letter(raw, source, internal_error(exc))]
            for out in outs:
                await send(out)

    @app.agent(routing_inputs, name="routing", concurrency=1)
    async def routing_agent(stream: faust.StreamT[bytes]) -> None:
        """The Analyst on outcomes, the Pilot on outcomes and on the hypotheses topic."""
        checkpointed = [time.monotonic()]
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
            # Faust writes a table only inside stream iteration (the event names the changelog
            # partition), so the checkpoint happens here rather than on a timer.
            if time.monotonic() - checkpointed[0] >= 1.0:
                checkpointed[0] = time.monotonic()
                analyst_state.flush()
                pilot_state.flush()

    _add_ops(app, settings)

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

    ensure_topics(settings)
    app = create_passthrough_app(settings) if passthrough else create_app(settings)
    worker = _Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


class _Worker(faust.Worker):
    """Faust's worker without its terminal spinner.

    The spinner hooks a DEBUG-level handler onto the root logger, which makes aiokafka and faust
    build a debug record for every message sent (a tenth of the worker's CPU, measured with
    py-spy) and writes terminal escape codes into log files.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        for noisy in ("aiokafka", "faust.topics"):
            logging.getLogger(noisy).setLevel(max(level, logging.INFO))
        # A refused ack is rare and worth seeing whatever the level (streams.transport).
        logging.getLogger("streams.transport").setLevel(logging.INFO)
