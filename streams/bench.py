"""`rakshit bench pipeline`: the worker's sustained throughput beside a raw Kafka passthrough.

The machine is shared and noisy, so both sides run in the same invocation, alternating, each on
fresh topics with the same pre-encoded transactions, and the figures are medians over rounds with
their ratio. The passthrough is the same Faust client and guarantee forwarding records untouched:
the ceiling any work in the worker eats into.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

from confluent_kafka import Producer

from schemas.codec import make_codec
from streams.admin import delete_run_topics, end_offsets, ensure_topics, free_port
from streams.config import Settings
from streams.demo import start_worker, stop_process, wait_until_ready
from streams.simulator.population import build_population
from streams.simulator.scenarios import get_scenario
from streams.simulator.traffic import EventClock, TrafficGenerator
from streams.topics import Topic, topic_name


def _records(settings: Settings, count: int, seed: int) -> list[tuple[bytes, bytes]]:
    codec = make_codec(settings.schema_registry_url)
    gen = TrafficGenerator(build_population(seed, customers=max(2_000, count // 10)),
                           get_scenario("normal"), seed, EventClock.for_run(count / 1000.0))
    topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
    out = []
    for _ in range(count):
        tx = gen.generate().transaction
        out.append((tx["card_token"].encode(), codec.encode("transaction", tx, topic=topic)))
    return out


def _one_run(base: Settings, records: list[tuple[bytes, bytes]], passthrough: bool,
             tag: str) -> float:
    settings = replace(base, topic_prefix=f"{tag}.", app_id=f"rakshit-{tag}",
                       metrics_port=free_port())
    ensure_topics(settings)
    worker, _ = start_worker(settings, f"{tag}.log", passthrough=passthrough)
    try:
        wait_until_ready(settings, worker)
        topic = topic_name(Topic.TRANSACTIONS, settings.topic_prefix)
        decisions = topic_name(Topic.DECISIONS, settings.topic_prefix)
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5,
                             "queue.buffering.max.messages": 1_000_000})
        started = time.monotonic()
        for key, value in records:
            producer.produce(topic, key=key, value=value)
        producer.flush(60)
        while sum(end_offsets(settings, decisions).values()) < len(records):
            if worker.poll() is not None:
                raise RuntimeError(f"{tag}: worker exited with {worker.returncode}")
            time.sleep(0.05)
        return len(records) / (time.monotonic() - started)
    finally:
        stop_process(worker)
        delete_run_topics(settings)


def bench_pipeline(settings: Settings, transactions: int = 20_000, rounds: int = 3,
                   seed: int = 5) -> dict[str, Any]:
    records = _records(settings, transactions, seed)
    stamp = time.strftime("%H%M%S")
    runs: dict[str, list[float]] = {"passthrough": [], "worker": []}
    for r in range(rounds):
        for mode in ("passthrough", "worker"):
            tps = _one_run(settings, records, mode == "passthrough", f"bench{stamp}-{mode}-{r}")
            runs[mode].append(round(tps, 1))
            print(f"  round {r + 1}/{rounds} {mode:<12} {tps:8.0f} tx/s", flush=True)
    worker = statistics.median(runs["worker"])
    baseline = statistics.median(runs["passthrough"])
    return {
        "transactions_per_run": transactions,
        "rounds": rounds,
        "worker_tps": runs["worker"],
        "passthrough_tps": runs["passthrough"],
        "worker_tps_median": worker,
        "passthrough_tps_median": baseline,
        "ratio": round(worker / baseline, 3),
    }


def bench_scoring(settings: Settings, rows: int = 2_000, seed: int = 3) -> dict[str, Any]:
    """The scoring step alone (no Kafka): the decision chain per transaction with the champion,
    explanations for review/decline only (the default) and for every verdict, plus the booster's
    raw cost per row, one at a time and in a batch. Rows are handbook transactions with their
    offline features, the data the champion was trained on."""
    from datetime import UTC

    import numpy as np

    from agents.pipeline import BoosterScorer, DecisionContext, DecisionPipeline
    from scoring import features as F
    from scoring.explain import measure_cost
    from scoring.rules import RuleEngine
    from streams.config import HANDBOOK_DIR
    from streams.models import registry_for
    from streams.simulator.handbook import _transaction

    champion = registry_for(settings).champion()
    if champion is None:
        raise SystemExit("no champion model: run `rakshit train` first")
    frame = F.offline_features(HANDBOOK_DIR)
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
            t_ms = int(moment.timestamp() * 1000)
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
