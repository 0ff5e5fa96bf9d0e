"""The simulator's only Kafka code: publishing generated traffic and following routing policy.

Delivery is idempotent with acks=all, and every delivery report is counted: a run that lost
records ends by raising :class:`DeliveryFailed`, never by quietly reporting success. Kafka record
timestamps are left to the producer (wall time) on purpose: a replay of 2018 data stamped with
event time would fall straight out of the topics' time-based retention.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer

from agents.routing.baseline import write_baseline
from schemas.codec import Codec
from schemas.codec import make_codec as registry_codec
from streams.config import Settings
from streams.simulator.handbook import DEFAULT_LABEL_DELAY_DAYS, iter_handbook
from streams.simulator.population import Population, build_population
from streams.simulator.routing import ApplyResult, RoutingTable
from streams.simulator.scenarios import Scenario, get_scenario
from streams.simulator.traffic import EventClock, TrafficGenerator
from streams.topics import SPECS, Topic, topic_name

OnTransaction = Callable[[str, float], None]
Progress = Callable[["SimulationReport"], None]


@dataclass(frozen=True)
class SimulationOptions:
    scenario: str = "normal"
    rate: float = 200.0  # transactions per wall second
    duration_s: float = 60.0  # wall seconds; 0 runs until stopped or interrupted
    seed: int = 7
    speedup: float = 1.0  # event seconds per wall second
    label_delay_days: tuple[float, float] = (3.0, 10.0)
    # Outage placement (scenarios with an outage); None picks the busiest issuer / its primary.
    outage_issuer: str | None = None
    outage_route: str | None = None
    # Wall seconds into the run (None: the scenario's 60 s / 600 s), scaled by speedup into event
    # time, so the outage stays on screen for the same time whatever the speedup.
    outage_start_s: float | None = None
    outage_duration_s: float | None = None
    outage_success: float | None = None
    customers: int = 2000
    merchants: int = 400
    follow_policies: bool = True
    policy_wait_s: float = 5.0  # how long to wait for existing policies before producing


@dataclass
class SimulationReport:
    scenario: str
    transactions: int = 0
    outcomes: int = 0
    labels: int = 0
    labels_pending: int = 0  # known_at beyond the run's event-time horizon: not emitted
    fraud_transactions: int = 0
    policies_applied: int = 0
    policies_ignored: int = 0
    delivery_errors: int = 0
    wall_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # first few delivery failures
    policy_errors: list[str] = field(default_factory=list)  # first few refused policies


class DeliveryFailed(RuntimeError):
    """Some records were not acknowledged; the report says how many."""

    def __init__(self, report: SimulationReport) -> None:
        detail = "; ".join(report.errors[:3])
        super().__init__(f"{report.delivery_errors} records not delivered: {detail}")
        self.report = report


def make_codec(settings: Settings) -> Codec:
    """The deployment's codec (a seam: tests substitute one that needs no registry)."""
    return registry_codec(settings.schema_registry_url)


class TokenBucket:
    """Paces work to ``rate`` per second of wall time, allowing a short burst to catch up."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 20)
        self._clock = clock
        self._tokens = 0.0
        self._last = clock()

    def take(self, limit: int) -> int:
        """Take up to ``limit`` whole tokens that are available now."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        n = min(limit, int(self._tokens))
        self._tokens -= n
        return n

    def wait_s(self) -> float:
        return max(0.0, (1.0 - self._tokens) / self.rate)


class _Publisher:
    """Encodes, keys and produces records, counting deliveries."""

    _MAX_ERRORS_KEPT = 10

    def __init__(self, settings: Settings, codec: Codec, report: SimulationReport) -> None:
        self._codec = codec
        self._report = report
        self._lock = threading.Lock()
        self._producer = Producer({
            **settings.kafka_config(),
            "client.id": "rakshit-simulator",
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,  # as the fraud lane's producer (streams.worker.lane.LINGER_MS)
            # No compression: on loopback it saves nothing, and the broker decompresses every
            # batch to validate it.
        })
        self._targets = {t: (topic_name(t, settings.topic_prefix), SPECS[t].schema, SPECS[t].key)
                         for t in (Topic.TRANSACTIONS, Topic.AUTH_OUTCOMES, Topic.LABELS)}

    def publish(self, topic: Topic, record: Mapping[str, Any]) -> None:
        name, schema, key_field = self._targets[topic]
        value = self._codec.encode(schema, record, topic=name)
        key = str(record[key_field]).encode()
        while True:
            try:
                self._producer.produce(name, value=value, key=key, on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            self._error(remaining, f"{remaining} records still queued after {timeout_s:.0f}s flush")

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._error(1, f"{msg.topic()}: {err}")

    def _error(self, count: int, text: str) -> None:
        with self._lock:
            self._report.delivery_errors += count
            if len(self._report.errors) < self._MAX_ERRORS_KEPT:
                self._report.errors.append(text)


class _PolicyFollower(threading.Thread):
    """Reads the compacted routing-policy topic from the start and applies it to the table."""

    def __init__(self, settings: Settings, codec: Codec, table: RoutingTable,
                 report: SimulationReport) -> None:
        super().__init__(name="rakshit-sim-policies", daemon=True)
        self._topic = topic_name(Topic.ROUTING_POLICY, settings.topic_prefix)
        self._codec = codec
        self._table = table
        self._report = report
        self.caught_up = threading.Event()
        self.halt = threading.Event()
        self._consumer = Consumer({
            **settings.kafka_config(),
            "group.id": f"rakshit-simulator-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        })

    def run(self) -> None:
        try:
            self._consumer.subscribe([self._topic])
            while not self.halt.is_set():
                msg = self._consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        self._note(f"policy consumer: {err}")
                    # Nothing (more) to catch up on: a missing topic is not worth waiting for.
                    self.caught_up.set()
                    continue
                self._apply(msg)
        finally:
            self.caught_up.set()
            self._consumer.close()

    def _apply(self, msg: Message) -> None:
        value = msg.value()
        if value is None:  # tombstone on the compacted topic: no policy to follow
            return
        try:
            decoded = self._codec.decode(value, topic=self._topic, expect="routing_policy")
            result = self._table.apply(decoded.record)
        except Exception as exc:  # a bad record must not stop the gateway following later ones
            self._table.reject(str(exc))
            self._note(f"undecodable policy at offset {msg.offset()}: {exc}")
            return
        if result is ApplyResult.INVALID:
            self._note(f"invalid policy: {self._table.last_error}")
        self._report.policies_applied = self._table.applied
        self._report.policies_ignored = self._table.ignored

    def _note(self, text: str) -> None:
        if len(self._report.policy_errors) < 10:
            self._report.policy_errors.append(text)


def _options_scenario(options: SimulationOptions) -> Scenario:
    """The scenario with the run's outage placement; wall seconds become event seconds."""
    scenario = get_scenario(options.scenario)
    outage = scenario.outage
    if outage is None:
        return scenario
    start = outage.start_s if options.outage_start_s is None else options.outage_start_s
    duration = outage.duration_s if options.outage_duration_s is None else options.outage_duration_s
    success = outage.success if options.outage_success is None else options.outage_success
    return replace(scenario, outage=replace(outage, start_s=start * options.speedup,
                                            duration_s=duration * options.speedup,
                                            success=success))


def build_generator(
    options: SimulationOptions,
    clock: EventClock,
    population: Population | None = None,
    routing: RoutingTable | None = None,
) -> TrafficGenerator:
    """The generator a run with ``options`` uses (exposed so the CLI can benchmark it)."""
    population = population or build_population(options.seed, customers=options.customers,
                                                merchants=options.merchants)
    return TrafficGenerator(
        population, _options_scenario(options), options.seed, clock,
        routing=routing or RoutingTable.from_population(population),
        label_delay_days=options.label_delay_days,
        outage_issuer=options.outage_issuer, outage_route=options.outage_route,
    )


def run_simulation(
    settings: Settings,
    options: SimulationOptions,
    on_transaction: OnTransaction | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> SimulationReport:
    """Produce a scenario's traffic at ``options.rate`` for ``options.duration_s`` wall seconds."""
    if options.rate <= 0:
        raise ValueError("rate must be positive")
    stop = stop or threading.Event()
    report = SimulationReport(scenario=options.scenario)
    codec = make_codec(settings)
    clock = EventClock.for_run(options.duration_s, options.speedup)
    generator = build_generator(options, clock)
    # The gateways' static weights, for the Pilot to shift from and restore to (a worker reads
    # them when it starts: start the simulator once before the worker, as the demo does).
    write_baseline(settings.routing_baseline, generator.population.default_weights)
    publisher = _Publisher(settings, codec, report)
    follower: _PolicyFollower | None = None
    if options.follow_policies:
        follower = _PolicyFollower(settings, codec, generator.routing, report)
        follower.start()
        follower.caught_up.wait(options.policy_wait_s)

    began = time.monotonic()
    deadline = began + options.duration_s if options.duration_s > 0 else float("inf")
    bucket = TokenBucket(options.rate)
    next_progress = began + 1.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            n = bucket.take(1000)
            if n == 0:
                publisher.poll()
                time.sleep(min(bucket.wait_s(), 0.01))
                continue
            for _ in range(n):
                event = generator.generate()
                tx = event.transaction
                if on_transaction is not None:
                    on_transaction(tx["transaction_id"], time.time())
                publisher.publish(Topic.TRANSACTIONS, tx)
                publisher.publish(Topic.AUTH_OUTCOMES, event.outcome)
            report.transactions += n
            report.outcomes += n
            for label in generator.due_labels():
                publisher.publish(Topic.LABELS, label)
                report.labels += 1
            publisher.poll()
            if progress is not None and now >= next_progress:
                report.fraud_transactions = sum(generator.fraud_counts.values())
                report.labels_pending = generator.pending_labels
                report.wall_seconds = now - began
                progress(report)
                next_progress = now + 1.0
    except KeyboardInterrupt:
        pass  # an interrupted run still flushes and reports what it produced
    finally:
        if follower is not None:
            follower.halt.set()
        publisher.flush()
        if follower is not None:
            follower.join(5.0)
        report.fraud_transactions = sum(generator.fraud_counts.values())
        report.labels_pending = generator.pending_labels
        report.policies_applied = generator.routing.applied
        report.policies_ignored = generator.routing.ignored
        report.wall_seconds = time.monotonic() - began
    if report.delivery_errors:
        raise DeliveryFailed(report)
    return report


def replay_handbook(
    settings: Settings,
    data_dir: Path,
    start: date,
    end: date,
    speedup: float = 0.0,
    on_transaction: OnTransaction | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    *,
    label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS,
    label_lead_s: float = 0.0,
    fraud_labels_only: bool = False,
) -> SimulationReport:
    """Publish handbook days ``start``..``end`` (inclusive) with their labels.

    ``speedup`` paces by event time (event seconds per wall second); 0 publishes as fast as the
    producer allows.
    """
    if speedup < 0:
        raise ValueError("speedup must be >= 0")
    stop = stop or threading.Event()
    report = SimulationReport(scenario="handbook")
    codec = make_codec(settings)
    publisher = _Publisher(settings, codec, report)
    began = time.monotonic()
    next_progress = began + 1.0
    first_event: float | None = None
    try:
        for n, event in enumerate(iter_handbook(
                data_dir, start, end, label_delay_days=label_delay_days,
                label_lead=timedelta(seconds=label_lead_s),
                fraud_labels_only=fraud_labels_only)):
            if stop.is_set():
                break
            if speedup > 0:
                event_ts = event.event_time.timestamp()
                if first_event is None:
                    first_event = event_ts
                ahead = (event_ts - first_event) / speedup - (time.monotonic() - began)
                if ahead > 0.001:
                    publisher.poll()
                    stop.wait(ahead)
                    if stop.is_set():
                        break
            if event.kind == "transaction":
                if on_transaction is not None:
                    on_transaction(event.record["transaction_id"], time.time())
                publisher.publish(Topic.TRANSACTIONS, event.record)
                report.transactions += 1
            else:
                publisher.publish(Topic.LABELS, event.record)
                report.labels += 1
                if event.record["label"] == "FRAUD":
                    report.fraud_transactions += 1
            if n % 1000 == 0:
                publisher.poll()
                now = time.monotonic()
                if progress is not None and now >= next_progress:
                    report.wall_seconds = now - began
                    progress(report)
                    next_progress = now + 1.0
    except KeyboardInterrupt:
        pass
    finally:
        publisher.flush()
        report.wall_seconds = time.monotonic() - began
    if report.delivery_errors:
        raise DeliveryFailed(report)
    return report


__all__ = [
    "DeliveryFailed",
    "SimulationOptions",
    "SimulationReport",
    "TokenBucket",
    "build_generator",
    "make_codec",
    "replay_handbook",
    "run_simulation",
]
