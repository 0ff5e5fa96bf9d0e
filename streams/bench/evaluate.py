"""`rakshit evaluate`: the handbook's protocols on features the streaming worker computed.

The data is replayed through Kafka in event-time order (transactions, and their fraud labels,
known a week later, released early: see LABEL_LEAD_S) into a worker on fresh topics. Every
verdict logs the features it was scored with; those streamed features, joined with the
handbook's labels, are what the protocol trains and tests on (`scoring.train.score_protocol`).
The same rows are also built by the offline builder, and the largest difference per feature is
reported: train/serve parity, measured on the whole replay.

The replay starts 38 days before the first day the protocol reads (terminal windows reach 37
days back), so every row it scores has its full history.

A custom window (`--train START END --test START END [--delay-days N]`) is a protocol of one
fold (``scoring.train.Window``) on any folder laid out like the handbook's; its dates are checked
against the data before anything starts, so a wrong date fails in a second, naming its option.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from confluent_kafka import Consumer, TopicPartition

from schemas.codec import make_codec
from scoring import dataset
from scoring import features as F
from scoring.train import (
    DELTA_DELAY,
    DELTA_TEST,
    DELTA_TRAIN,
    LABEL,
    PROTOCOLS,
    Window,
    score_protocol,
    score_window,
    window_split,
)
from streams.admin import delete_run_topics, end_offsets, ensure_topics, free_port
from streams.config import Settings
from streams.launcher import (
    as_service,
    check_alive,
    start_worker,
    stop_process,
    wait_until_ready,
)
from streams.simulator.producer import SimulationReport, replay_handbook
from streams.topics import Topic, topic_name

HISTORY_DAYS = 38
# Labels are released right after their transaction (known_at unchanged). Terminal features read
# a label only for transactions at least seven days old, whose labels are known by then, and the
# online learner waits for known_at, so nothing leaks; what it buys is a seven-day event-time
# margin against the labels topic being consumed behind the transactions topic. With a one-hour
# lead a loaded CI machine once saw the labels stage fall further behind than that.
LABEL_LEAD_S = 7 * 24 * 3600.0
# Transactions produced but not yet decided. A replay is far faster than the worker; flooding it
# with a million-record backlog made Faust's commits take seconds each and, once, stall the
# terminal stage. Holding the backlog to this keeps the worker at its steady rate.
MAX_IN_FLIGHT = 30_000
STALL_S = 180.0


def window_from_args(protocol: str | None, train: Sequence[date] | None,
                     test: Sequence[date] | None, delay_days: int | None) -> str | Window:
    """What `rakshit evaluate` was asked for: a protocol's name (chapter5 by default) or a
    custom window; ValueError naming the option when the arguments cannot make one."""
    if train is None and test is None:
        if delay_days is not None:
            raise ValueError("--delay-days applies to a custom window: give --train and --test")
        return protocol or "chapter5"
    if protocol is not None:
        raise ValueError(f"--protocol {protocol} and --train/--test are exclusive: a window is "
                         "a protocol of its own")
    if train is None or test is None:
        raise ValueError(f"{'--test' if train else '--train'} START END is missing: a custom "
                         "window needs both --train and --test")
    delay = DELTA_DELAY if delay_days is None else delay_days
    if delay < 0:
        raise ValueError(f"--delay-days must be 0 or more, not {delay}")
    for option, (first, last) in (("--train", train), ("--test", test)):
        if first > last:
            raise ValueError(f"{option}: START {first} is after END {last}")
    window = Window(train[0], train[1], test[0], test[1], delay)
    if window.test_start < window.earliest_test_start:
        raise ValueError(
            f"--test: starts {window.test_start}, before the training period's labels are known "
            f"(--train ends {window.train_end}, --delay-days {delay}): the test may start on "
            f"{window.earliest_test_start} at the earliest")
    return window


def _days_text(days: Sequence[date]) -> str:
    shown = ", ".join(str(d) for d in days[:3])
    return shown + (f" and {len(days) - 3} more" if len(days) > 3 else "")


def check_window_data(window: Window, data_dir: Path) -> Window | None:
    """Check the window against the data under ``data_dir`` (raw/*.parquet): every day present,
    frauds to learn from, both classes to test on. Returns the validation fold the search uses
    (``Window.validation``) when the data holds it, else None; ValueError names the option."""
    raw_dir = data_dir / "raw"
    files = sorted(raw_dir.glob("*.parquet"))
    if not files:
        raise ValueError(f"--data: no raw/*.parquet under {data_dir} (a folder laid out like "
                         "the handbook's)")
    frame = pd.concat([pq.read_table(path, columns=["TX_DATETIME", "CUSTOMER_ID", LABEL])
                       .to_pandas() for path in files], ignore_index=True)
    present = set(frame["TX_DATETIME"].dt.date.unique())
    held = f"{min(present)}..{max(present)}" if present else "no transactions"

    def missing(fold: Window) -> dict[str, list[date]]:
        return {option: [d for d in days if d not in present]
                for option, days in (("--train", fold.train_days()),
                                     ("--test", fold.test_days()))}

    for option, absent in missing(window).items():
        if absent:
            raise ValueError(f"{option}: no transactions on {_days_text(absent)} in {raw_dir} "
                             f"(it holds {held})")

    def problem(fold: Window) -> str | None:
        train, test = window_split(frame, fold)
        if not train[LABEL].any():
            return (f"--train: no fraud in {fold.train_start}..{fold.train_end} to learn "
                    "from")
        if test[LABEL].nunique() < 2:
            return (f"--test: {fold.test_start}..{fold.test_end} needs frauds and genuine "
                    "transactions once the cards known compromised are left out; it has "
                    f"{int(test[LABEL].sum())} frauds in {len(test)} rows")
        return None

    trouble = problem(window)
    if trouble:
        raise ValueError(trouble)
    validation = window.validation()
    if any(missing(validation).values()) or problem(validation):
        return None
    return validation


def protocol_window(protocol: str) -> tuple[date, date]:
    """First and last day whose features the protocol reads."""
    spec = PROTOCOLS[protocol]
    starts = list(spec.test_starts) + list(spec.validation_starts)
    last = max(spec.test_starts) + timedelta(days=DELTA_TRAIN + DELTA_DELAY + DELTA_TEST - 1)
    return min(starts), last


class FeatureCollector(threading.Thread):
    """Reads verdicts as a downstream consumer would and keeps the features each one logged."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="feature-collector", daemon=True)
        self.settings = settings
        self.topic = topic_name(Topic.DECISIONS, settings.topic_prefix)
        self.features: dict[str, dict[str, float]] = {}
        self.scores: dict[str, float] = {}
        self.verdicts = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        codec = make_codec(self.settings.schema_registry_url)
        consumer = Consumer({**self.settings.kafka_config(),
                             "group.id": f"rakshit-evaluate-{time.time_ns()}",
                             "enable.auto.commit": False, "isolation.level": "read_committed"})
        start = end_offsets(self.settings, self.topic)
        consumer.assign([TopicPartition(self.topic, p, 0) for p in start])
        try:
            while not self.stop_event.is_set():
                for msg in consumer.consume(num_messages=2000, timeout=0.5):
                    if msg.error():
                        continue
                    v = codec.decode(msg.value() or b"", topic=self.topic, expect="verdict").record
                    self.verdicts += 1
                    self.features[v["transaction_id"]] = v["features"]
                    self.scores[v["transaction_id"]] = v["score"]
        finally:
            consumer.close()


def _raw_rows(data_dir: Path, start: date, end: date) -> pd.DataFrame:
    frames = []
    for path in sorted(data_dir.glob("*.parquet")):
        table = pq.read_table(path, columns=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID",
                                             "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"])
        frame = table.to_pandas()
        day = frame["TX_DATETIME"].dt.date
        frames.append(frame[(day >= start) & (day <= end)])
    return pd.concat(frames, ignore_index=True)


def replay_and_collect(settings: Settings, data_dir: Path, start: date, end: date,
                       log: Any = print) -> tuple[FeatureCollector, dict[str, Any]]:
    """Replay `start..end` through a fresh worker; return the collected verdict features."""
    stamp = time.strftime("%H%M%S")
    run = replace(settings, topic_prefix=f"eval{stamp}.", app_id=f"rakshit-eval-{stamp}",
                  metrics_port=free_port())
    ensure_topics(run)
    worker, worker_log = start_worker(run, f"eval-{stamp}.log")
    collector = FeatureCollector(run)
    try:
        wait_until_ready(run, worker)
        collector.start()
        t0 = time.monotonic()

        def backpressure(progress: SimulationReport) -> None:
            waited = time.monotonic()
            while progress.transactions - len(collector.features) > MAX_IN_FLIGHT:
                check_alive(worker)
                if time.monotonic() - waited > STALL_S:
                    raise RuntimeError(f"worker made no room for {STALL_S:.0f}s; see {worker_log}")
                time.sleep(0.5)
            log(f"  {progress.transactions} replayed, {len(collector.features)} decided "
                f"({time.monotonic() - t0:.0f}s)")

        report = replay_handbook(as_service(run, "gateway"), data_dir, start, end, 0.0,
                                 progress=backpressure,
                                 label_lead_s=LABEL_LEAD_S, fraud_labels_only=True)
        log(f"replayed {report.transactions} transactions and {report.labels} fraud labels "
            f"in {time.monotonic() - t0:.0f}s; waiting for their verdicts")
        last, last_change = -1, time.monotonic()
        while len(collector.features) < report.transactions:
            check_alive(worker)
            if len(collector.features) != last:
                last, last_change = len(collector.features), time.monotonic()
                log(f"  {last}/{report.transactions} verdicts ({time.monotonic() - t0:.0f}s)")
            elif time.monotonic() - last_change > 120:
                raise RuntimeError(f"no verdict for 120 s at {last}; see {worker_log}")
            for _ in range(10):  # a dead worker is noticed within half a second
                time.sleep(0.5)
                check_alive(worker)
        elapsed = time.monotonic() - t0
    finally:
        collector.stop_event.set()
        stop_process(worker)
        delete_run_topics(run)
    return collector, {"transactions": report.transactions, "fraud_labels": report.labels,
                       "seconds": round(elapsed, 1),
                       "throughput_tps": round(report.transactions / elapsed, 1),
                       "worker_log": worker_log}


def parity(streamed: pd.DataFrame, offline: pd.DataFrame, names: list[str]) -> dict[str, float]:
    """Largest relative difference per feature between the two frames (same row order)."""
    out = {}
    for name in names:
        a = streamed[name].to_numpy(dtype=np.float64)
        b = offline[name].to_numpy(dtype=np.float64)
        scale = np.maximum(np.abs(b), 1e-12)
        out[name] = float(np.max(np.abs(a - b) / scale)) if len(a) else 0.0
    return out


def evaluate(settings: Settings, data_dir: Path, protocol: str | Window,
             summary_json: Path | None = None, curves_dir: Path | None = None,
             log: Any = print) -> dict[str, Any]:
    """``protocol`` is a handbook protocol's name or a custom ``Window`` (checked against the
    data first: see ``check_window_data``)."""
    validation: Window | None = None
    if isinstance(protocol, Window):
        validation = check_window_data(protocol, data_dir)
        first, last = (validation or protocol).train_start, protocol.test_end
        name = (f"window train {protocol.train_start}..{protocol.train_end}, test "
                f"{protocol.test_start}..{protocol.test_end}")
    else:
        first, last = protocol_window(protocol)
        name = protocol
    start = first - timedelta(days=HISTORY_DAYS)
    log(f"{name}: replaying {start}..{last} through Kafka (features from {first})")
    collector, replay = replay_and_collect(settings, data_dir / "raw", start, last, log)

    raw = _raw_rows(data_dir / "raw", first, last)
    names = F.feature_names("handbook")
    ids = ("hb-" + raw["TRANSACTION_ID"].astype(str)).tolist()
    rows = [collector.features[i] for i in ids]
    streamed = raw.copy()
    for name in names:
        streamed[name] = [r[name] for r in rows]

    offline_all = dataset.offline_features(data_dir, settings.features_cache).set_index(
        "TRANSACTION_ID")
    offline = offline_all.loc[raw["TRANSACTION_ID"]].reset_index()
    gaps = parity(streamed, offline, names)
    if isinstance(protocol, Window):
        report = score_window(streamed, protocol, validation=validation, curves_dir=curves_dir)
    else:
        report = score_protocol(streamed, protocol, curves_dir=curves_dir)
    report["features_from"] = "Kafka replay: features logged in the worker's verdicts"
    report["replay"] = {**replay, "from": str(start), "to": str(last)}
    report["parity_max_relative_error"] = gaps
    report["parity_ok"] = max(gaps.values()) <= 1e-9
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report
