"""What a partition learned survives its worker, and the fleet's model quality is one figure.

Through the real broker: a worker learns from labels (its online learner gets a say once each
partition has seen a few), stops; a new worker takes the partitions over and its first verdict
still carries the learner's weight, because it recovered what they had learned from their
changelog (streams.worker.learning). Two workers then share the partitions, and the API merges
every partition's window of labelled scores into one AUC, AP and precision, as JSON and as
Prometheus gauges.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import make_codec
from streams.admin import end_offsets, ensure_topics, free_port
from streams.config import Settings
from streams.launcher import stop_process
from streams.topics import Topic
from tests.factories import transaction
from tests.kafka_helpers import name, produce
from tests.test_casework_end_to_end import (
    WAIT_S,
    register_amount_model,
    scrape,
    send_transactions,
    start_worker,
    verdict_of,
)
from tests.test_crash import _label
from tests.test_store_kafka import _api, call, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 600
MIN_LABELS = 5


def _traffic(start: datetime) -> list[dict[str, Any]]:
    return [transaction(i, card=f"tok_{i % 60:04x}", amount=f"{20 + (i * 37) % 1500}.00",
                        when=start + timedelta(seconds=5 * i)) for i in range(N)]


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S:.0f} s"
        time.sleep(0.3)


def test_learning_survives_a_restart_and_quality_is_merged_across_workers(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(online_min_labels=MIN_LABELS, metrics_port=free_port())
    ensure_topics(settings)
    register_amount_model(settings.home)
    codec = make_codec(None)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    txs = _traffic(start)
    labels = [_label(t, float(t["amount"]) > 900.0) for t in txs[: N // 2]]
    labels_topic = name(settings, Topic.LABELS)

    first = start_worker(settings, tmp_path / "first")
    try:
        send_transactions(settings, codec, txs)
        decisions = name(settings, Topic.DECISIONS)
        _until("every verdict", lambda: sum(end_offsets(settings, decisions).values()) >= N)
        # Labels for the first half, known after event time has passed them: learned at once.
        produce(settings, [(labels_topic, lb["card_token"].encode(),
                            codec.encode("label", lb, topic=labels_topic)) for lb in labels])
        _until("labels learned", lambda: scrape(settings).get(
            "rakshit_online_labels_seen", 0.0) == len(labels))
        taught = transaction(N, card="tok_next", amount="950.00",
                             when=start + timedelta(seconds=5 * N))
        send_transactions(settings, codec, [taught])
        assert verdict_of(settings, codec, taught)["model_version"] == "1.0.0+online"
        time.sleep(2 * settings.commit_interval_s)  # a checkpoint writes what was learned
    finally:
        first.stop()

    second = start_worker(settings, tmp_path / "second")
    try:
        # Recovered before any new label: every partition's learner as it was.
        assert scrape(settings)["rakshit_online_labels_seen"] == len(labels)
        later = transaction(N + 1, card="tok_new", amount="950.00",
                            when=start + timedelta(seconds=5 * N + 60))
        send_transactions(settings, codec, [later])
        assert verdict_of(settings, codec, later)["model_version"] == "1.0.0+online"

        # A second worker takes some partitions; the API merges them all.
        third = start_worker(replace_port(settings), tmp_path / "third")
        api, base, viewer, _ = _api(settings)
        try:
            reply = wait_for("merged quality", lambda: call(base, viewer, "GET",
                                                            "/api/model-quality"),
                             lambda r: r[0] == 200 and r[1]["labels_recorded"] == len(labels)
                             and r[1]["partitions"] == settings.default_partitions)
            quality = reply[1]
            frauds = sum(1 for lb in labels if lb["label"] == "FRAUD")
            assert quality["labels_in_windows"] == len(labels)
            assert quality["frauds_in_windows"] == frauds
            # The amount model ranks big payments (the frauds here) first.
            assert quality["auc"] > 0.8 and quality["average_precision"] > 0.5
            assert 0.0 < quality["precision"] <= 1.0
            text = urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=10).read()
            gauges = dict(line.rsplit(" ", 1) for line in text.decode().splitlines()
                          if line and not line.startswith("#"))
            assert float(gauges["rakshit_model_auc"]) == pytest.approx(quality["auc"])
            assert float(gauges["rakshit_model_partitions_reporting"]) == 3.0
        finally:
            stop_process(api)
            third.stop()
    finally:
        second.stop()


def replace_port(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, metrics_port=free_port())
