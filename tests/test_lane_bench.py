"""`rakshit bench lane` drives the lane's real per-batch code: every transaction gets a verdict."""

from __future__ import annotations

from pathlib import Path

from streams.bench.lane import bench_lane
from streams.config import Settings
from streams.topics import Topic, topic_name


def test_every_transaction_gets_one_verdict_and_state_is_written(tmp_path: Path) -> None:
    result = bench_lane(Settings(home=tmp_path), transactions=600, batch=250)
    assert result["transactions"] == 600
    assert result["outputs"][topic_name(Topic.DECISIONS)] == 600
    assert result["outputs"]["changelog records"] > 0
    figures = result["us_per_transaction"]
    assert figures["total"] > 0 and figures["card_stage"] > 0
    assert figures["total"] >= figures["terminal_stage_and_decisions"]
    assert result["ceiling_tps"] > 0
