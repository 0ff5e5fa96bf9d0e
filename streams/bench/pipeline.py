"""`rakshit bench pipeline`: the worker's sustained throughput beside two passthroughs.

The machine is shared and noisy, so every mode runs in the same invocation, alternating within each
round (the order rotates from round to round), each run on fresh topics and a fresh consumer group
with the same pre-encoded transactions produced as a backlog. A run's throughput is the record count
over the seconds from the first produce until the decision topic's end offsets add up to it; the
figures are medians over rounds with their ratios. The modes:

- ``worker``: the full worker (`rakshit worker`), ``--workers N`` processes sharing the topics and
  the consumer group, all ready before the first record is produced;
- ``faust``: the Faust passthrough (`rakshit worker --passthrough faust`): the worker's Faust
  client, guarantee and topics forwarding records untouched, what Faust itself costs;
- ``raw``: the raw passthrough (`rakshit worker --passthrough raw`, streams.bench.passthrough):
  confluent-kafka alone with the same guarantee, the ceiling Kafka and librdkafka set on this
  machine that any work in the worker eats into.

The passthroughs run as one process whatever ``--workers`` says. A run whose decisions stop
growing for ``STALL_S`` is reported and left out of the medians; a process that dies ends the
benchmark within a second with one line naming it (streams.launcher.ChildExited).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.clock import to_millis
from schemas.codec import make_codec
from streams.admin import delete_run_topics, ensure_topics, free_port
from streams.config import Settings
from streams.launcher import (
    ChildExited,
    as_service,
    check_alive,
    start_worker,
    stop_process,
    wait_until_ready,
)
from streams.simulator.population import build_population
from streams.simulator.scenarios import get_scenario
from streams.simulator.traffic import EventClock, TrafficGenerator
from streams.topics import Topic, topic_name

# Mode -> `rakshit worker --passthrough` value (None: the full worker).
MODES: dict[str, str | None] = {"worker": None, "faust": "faust", "raw": "raw"}
LABELS = {"worker": "worker", "faust": "faust passthrough", "raw": "raw passthrough"}
STALL_S = 120.0  # a run whose decisions do not grow for this long has failed


class RunFailed(RuntimeError):
    pass


TRAFFIC = ("handbook", "simulator")


def benchmark_records(settings: Settings, count: int, seed: int,
             traffic: str = "handbook") -> list[tuple[bytes, bytes]]:
    """The benchmark's transactions, encoded once. ``handbook``: the public data set's
    transactions from 2018-07-01 on, the traffic the champion was trained on, so reviews and
    declines (explanations, cases, notifications) come at its real rate (under 1%).
    ``simulator``: the gateway simulator's normal traffic, which the handbook-trained champion
    has never seen and flags about a third of (each flag costs an explanation, a case and a
    notification)."""
    codec = make_codec(settings.schema_registry_url)
    topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
    if traffic == "handbook":
        import itertools
        from datetime import date

        from streams.config import HANDBOOK_DIR
        from streams.simulator.handbook import iter_handbook

        events = (e.record for e in iter_handbook(HANDBOOK_DIR / "raw", date(2018, 7, 1),
                                                  date(2018, 10, 1)) if e.kind == "transaction")
        return [(tx["card_token"].encode(), codec.encode("transaction", tx, topic=topic))
                for tx in itertools.islice(events, count)]
    if traffic != "simulator":
        raise ValueError(f"traffic must be one of {TRAFFIC}")
    gen = TrafficGenerator(build_population(seed, customers=max(2_000, count // 10)),
                           get_scenario("normal"), seed, EventClock.for_run(count / 1000.0))
    out = []
    for _ in range(count):
        tx = gen.generate().transaction
        out.append((tx["card_token"].encode(), codec.encode("transaction", tx, topic=topic)))
    return out


class _EndOffsets:
    """The sum of a topic's end offsets, asked of the broker on one long-lived consumer (one
    built per check, as streams.admin.end_offsets does, would cost the machine more)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer({**settings.kafka_config(),
                                  "group.id": "rakshit-bench-offsets",
                                  "enable.auto.commit": False})
        meta = self.consumer.list_topics(topic, timeout=10)
        self.partitions = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]

    def total(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1]
                   for tp in self.partitions)

    def close(self) -> None:
        self.consumer.close()


def _wait_for_members(settings: Settings, count: int, procs: Sequence[subprocess.Popen[bytes]],
                      group: str, timeout_s: float = 120.0) -> None:
    """The group is stable with at least ``count`` members, each holding partitions."""
    admin = AdminClient({**settings.kafka_config()})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(*procs)
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
            holding = sum(1 for m in desc.members if m.assignment.topic_partitions)
            if str(desc.state).endswith("STABLE") and holding >= count:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RunFailed(f"group {group} did not reach {count} members holding partitions "
                    f"within {timeout_s:.0f}s")


def _one_run(base: Settings, records: list[tuple[bytes, bytes]], mode: str, tag: str,
             workers: int = 1) -> float:
    settings = replace(base, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}")
    ensure_topics(settings)
    count = workers if mode == "worker" else 1
    members = [replace(settings, metrics_port=free_port()) for _ in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[str] = []
    try:
        for i, member in enumerate(members):
            suffix = f"-{i}" if count > 1 else ""
            proc, log = start_worker(member, f"{tag}{suffix}.log", passthrough=MODES[mode])
            procs.append(proc)
            logs.append(log)
        try:
            for member, proc in zip(members, procs, strict=True):
                wait_until_ready(member, proc)
            if count > 1:
                # Each was ready once; the last to join moved partitions, so wait for the group
                # to settle with everyone holding some, then for each to be ready again.
                # The fraud lane's group moves the transactions (streams.worker.lane).
                _wait_for_members(settings, count, procs, f"{settings.app_id}-fraud")
                for member, proc in zip(members, procs, strict=True):
                    wait_until_ready(member, proc)
        except ChildExited:
            raise  # a dead process ends the benchmark, not just this run
        except RuntimeError as exc:
            raise RunFailed(f"{exc} (logs: {', '.join(logs)})") from exc
        return len(records) / backlog_decided(settings, records, procs, logs)
    finally:
        for proc in procs:
            stop_process(proc)
        delete_run_topics(settings)


def backlog_decided(settings: Settings, records: list[tuple[bytes, bytes]],
                    procs: Sequence[subprocess.Popen[bytes]], logs: Sequence[str]) -> float:
    """Produce ``records`` as a backlog and wait until the decision topic holds as many; the
    seconds from the first send to the last decision. ChildExited when a process dies,
    RunFailed when the decisions stall."""
    topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
    decisions = _EndOffsets(settings, topic_name(Topic.DECISIONS, settings.topic_prefix))
    try:
        # The traffic comes from a gateway, under its principal's ACLs like the real thing.
        producer = Producer({**as_service(settings, "gateway").kafka_config(), "linger.ms": 5,
                             "queue.buffering.max.messages": 1_000_000})
        started = time.monotonic()
        for i, (key, value) in enumerate(records):
            producer.produce(topic, key=key, value=value)
            if i % 10_000 == 0:
                check_alive(*procs)
        if producer.flush(60):
            raise RunFailed("the benchmark's own producer could not deliver the records")
        seen, progressed = 0, time.monotonic()
        while seen < len(records):
            check_alive(*procs)
            now_seen = decisions.total()
            if now_seen > seen:
                seen, progressed = now_seen, time.monotonic()
            elif time.monotonic() - progressed > STALL_S:
                raise RunFailed(f"stalled at {seen}/{len(records)} decisions for "
                                f"{STALL_S:.0f}s (logs: {', '.join(logs)})")
            else:
                time.sleep(0.02)
        return time.monotonic() - started
    finally:
        decisions.close()


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bench_pipeline(settings: Settings, transactions: int = 20_000, rounds: int = 3,
                   seed: int = 5, workers: int = 1, traffic: str = "handbook") -> dict[str, Any]:
    if workers < 1:
        raise ValueError("workers must be at least 1")
    records = benchmark_records(settings, transactions, seed, traffic)
    stamp = time.strftime("%H%M%S")
    order = list(MODES)
    runs: dict[str, list[float]] = {mode: [] for mode in order}
    failures: list[dict[str, Any]] = []
    print(f"pipeline: {transactions:,} {traffic} transactions per run, {rounds} round(s), worker "
          f"runs with {workers} process(es)", flush=True)
    for r in range(rounds):
        for mode in order[r % len(order):] + order[:r % len(order)]:
            try:
                tps = _one_run(settings, records, mode, f"bench{stamp}-{mode}-{r}", workers)
            except RunFailed as exc:
                failures.append({"round": r + 1, "mode": mode, "error": str(exc)})
                print(f"  round {r + 1}/{rounds} {LABELS[mode]:<18} failed: {exc}", flush=True)
                continue
            runs[mode].append(round(tps, 1))
            print(f"  round {r + 1}/{rounds} {LABELS[mode]:<18} {tps:9,.0f} tx/s", flush=True)
    worker = _median(runs["worker"])
    faust = _median(runs["faust"])
    raw = _median(runs["raw"])
    result: dict[str, Any] = {
        "transactions_per_run": transactions,
        "traffic": traffic,
        "rounds": rounds,
        "workers": workers,
        "worker_tps": runs["worker"],
        "faust_passthrough_tps": runs["faust"],
        "raw_passthrough_tps": runs["raw"],
        "worker_tps_median": worker,
        "faust_passthrough_tps_median": faust,
        "raw_passthrough_tps_median": raw,
        "ratio_to_faust": _ratio(worker, faust),
        "ratio_to_raw": _ratio(worker, raw),
        "faust_to_raw": _ratio(faust, raw),
        "failures": failures,
    }
    print()
    print(format_pipeline(result), flush=True)
    return result


def format_pipeline(result: dict[str, Any]) -> str:
    """The medians and ratios as a table."""
    def fig(value: float | None, spec: str, width: int = 0) -> str:
        return f"{'-':>{width}}" if value is None else format(value, f"{width}{spec}")

    rows = [("worker", result["worker_tps_median"], result["worker_tps"], None),
            ("faust passthrough", result["faust_passthrough_tps_median"],
             result["faust_passthrough_tps"], result["ratio_to_faust"]),
            ("raw passthrough", result["raw_passthrough_tps_median"],
             result["raw_passthrough_tps"], result["ratio_to_raw"])]
    lines = [f"{'mode':<18} {'median tx/s':>12} {'worker/mode':>12}  runs (tx/s)"]
    for label, median, values, ratio in rows:
        if label == "worker" and result["workers"] > 1:
            label = f"worker x{result['workers']}"
        each = ", ".join(f"{v:,.0f}" for v in values) or "none"
        lines.append(f"{label:<18} {fig(median, ',.0f', 12)} {fig(ratio, '.3f', 12)}  {each}")
    lines.append(f"faust passthrough / raw passthrough: {fig(result['faust_to_raw'], '.3f')}")
    if result["failures"]:
        lines.append(f"{len(result['failures'])} run(s) failed and are left out of the medians")
    return "\n".join(lines)


def bench_scoring(settings: Settings, rows: int = 2_000, seed: int = 3) -> dict[str, Any]:
    """The scoring step alone (no Kafka): the decision chain per transaction with the champion,
    explanations for review/decline only (the default) and for every verdict, plus the booster's
    raw cost per row, one at a time and in a batch. Rows are handbook transactions with their
    offline features, the data the champion was trained on."""
    from datetime import UTC

    import numpy as np

    from agents.fraud.pipeline import DecisionContext, DecisionPipeline
    from agents.fraud.risk_scorer import BoosterScorer
    from scoring import dataset
    from scoring import features as F
    from scoring.explain import measure_cost
    from scoring.rules import RuleEngine
    from streams.config import HANDBOOK_DIR
    from streams.simulator.handbook import _transaction
    from streams.worker.chain import registry_for

    champion = registry_for(settings).champion()
    if champion is None:
        raise SystemExit("no champion model: run `rakshit train` first")
    frame = dataset.offline_features(HANDBOOK_DIR, settings.features_cache)
    sample = frame.sample(n=rows, random_state=seed)
    names = champion.feature_names
    result: dict[str, Any] = {"model": champion.version, "rows": rows,
                              "trees": champion.booster.num_trees()}
    for label, explain_all in (("explain_review_decline", False), ("explain_every_verdict", True)):
        pipeline = DecisionPipeline(RuleEngine.from_file(),
                                    BoosterScorer(champion.booster, champion.version, names),
                                    explain_approvals=explain_all)
        latencies = []
        decisions: dict[str, int] = {}
        for record in sample.to_dict("records"):
            moment = record["TX_DATETIME"].to_pydatetime().replace(tzinfo=UTC)
            tx = _transaction(record, moment)
            feats = {n: float(record[n]) for n in F.feature_names("handbook")}
            t_ms = to_millis(moment)
            started = time.perf_counter()
            parts = pipeline.decide(tx, feats, DecisionContext(now_ms=t_ms))
            latencies.append((time.perf_counter() - started) * 1e6)
            decisions[parts.decision] = decisions.get(parts.decision, 0) + 1
        arr = np.asarray(latencies)
        result[label] = {"p50_us": round(float(np.percentile(arr, 50)), 1),
                         "p99_us": round(float(np.percentile(arr, 99)), 1),
                         "throughput_tps": round(len(arr) / (arr.sum() / 1e6), 1),
                         "decisions": decisions}
    cost = measure_cost(champion.booster, sample[names].to_numpy(dtype=np.float64))
    result["booster_us_per_row"] = {
        "predict_single": round(cost.raw_single_us, 1),
        "predict_batch": round(cost.raw_batch_us, 2),
        "treeshap_single": round(cost.contrib_single_us, 1),
        "treeshap_batch": round(cost.contrib_batch_us, 1),
    }
    return result
