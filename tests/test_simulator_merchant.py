"""The simulator's merchant and device fraud patterns, its offline runs, and a model trained on
them that uses the merchant and device features (no Kafka)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scoring import features as F
from scoring.gateway_offline import build_gateway_offline
from scoring.gateway_training import MERCHANT_FEATURES
from scoring.registry import ModelRegistry
from streams.simulator.offline import SimulatedRun, simulate
from streams.simulator.population import build_population
from streams.simulator.scenarios import FraudKind, FraudMix, Scenario
from streams.simulator.training import train_for_demo, train_simulated

START = datetime(2024, 1, 1, tzinfo=UTC)
# The fraud scenario with the merchant and device patterns ten times as frequent, so a small,
# quick world shows each several times.
RICH = Scenario("rich-fraud", "test", fraud=FraudMix(compromised_merchant=3.0,
                                                      device_card_testing=10.0,
                                                      fraud_ring_device=3.0))


@pytest.fixture(scope="module")
def run() -> SimulatedRun:
    """Twelve days of a small world at 3,000 payments a day."""
    return simulate(build_population(5, customers=800, merchants=120), RICH, 5, START,
                    12 * 86400.0, 3000 / 86400.0)


def _by_kind(run: SimulatedRun) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tx in run.transactions:
        kind = run.fraud.get(tx["transaction_id"])
        if kind is not None:
            found[kind].append(tx)
    return found


def test_merchant_and_device_patterns(run: SimulatedRun) -> None:
    found = _by_kind(run)
    assert {k.value for k in FraudKind} <= set(found)

    # A compromised merchant: for days, a share of its payments (at any of its terminals) is
    # fraud, on many cards.
    at_merchant = defaultdict(list)
    for tx in found[FraudKind.COMPROMISED_MERCHANT]:
        at_merchant[tx["merchant_id"]].append(tx)
    merchant, frauds = max(at_merchant.items(), key=lambda kv: len(kv[1]))
    span = max(t["event_time"] for t in frauds) - min(t["event_time"] for t in frauds)
    assert span > timedelta(days=2)
    assert len({t["card_token"] for t in frauds}) > 10
    theirs = [t for t in run.transactions if t["merchant_id"] == merchant
              and min(f["event_time"] for f in frauds) <= t["event_time"]
              <= max(f["event_time"] for f in frauds)]
    assert 0.1 < len(frauds) / len(theirs) < 0.7  # a share, not everything

    # Card testing from one device: many cards, tiny amounts, one shop, minutes.
    bursts = defaultdict(list)
    for tx in found[FraudKind.DEVICE_CARD_TESTING]:
        bursts[tx["device_id"]].append(tx)
    for burst in bursts.values():
        assert len({t["merchant_id"] for t in burst}) == 1
        assert len({t["card_token"] for t in burst}) >= 0.8 * len(burst)
        times = [t["event_time"] for t in burst]
        assert max(times) - min(times) <= timedelta(minutes=15)
        assert {t["channel"] for t in burst} == {"ECOMMERCE"}
    assert max(len(b) for b in bursts.values()) >= 15

    # A fraud ring's device: many cards at a few shops over a day or more.
    rings = defaultdict(list)
    for tx in found[FraudKind.FRAUD_RING_DEVICE]:
        rings[tx["device_id"]].append(tx)
    ring = max(rings.values(), key=len)
    assert len({t["card_token"] for t in ring}) >= 5
    assert 1 < len({t["merchant_id"] for t in ring}) <= 3
    assert max(t["event_time"] for t in ring) - min(t["event_time"] for t in ring) \
        > timedelta(hours=12)


def test_labels_name_merchant_and_device_and_come_once_known(run: SimulatedRun) -> None:
    by_id = {tx["transaction_id"]: tx for tx in run.transactions}
    assert run.labels
    for label in run.labels:
        tx = by_id[label["transaction_id"]]
        assert label["merchant_id"] == tx["merchant_id"]
        assert label["device_id"] == tx["device_id"]
        assert label["known_at"] <= START + timedelta(days=12)


def test_offline_features_see_the_patterns(run: SimulatedRun) -> None:
    frame = build_gateway_offline(run.transactions, run.outcomes, run.labels, run.fraud)
    assert len(frame) == len(run.transactions)
    assert set(F.feature_names("gateway")) <= set(frame.columns)
    kind = frame["TX_FRAUD_SCENARIO"]
    device = frame["device_reputation_score"]
    # Card testing from one device lights the device up; genuine payments mostly do not.
    assert device[kind == FraudKind.DEVICE_CARD_TESTING].mean() > 0.5
    assert device[kind == ""].mean() < 0.05
    # Once a compromised merchant's first frauds are known, its later payments carry them.
    flagged = frame["merchant_fraud_rate_7d"] > 0
    assert flagged[kind == FraudKind.COMPROMISED_MERCHANT].mean() > 0.6
    assert flagged[kind == FraudKind.COMPROMISED_MERCHANT].mean() \
        > 2 * flagged[kind == ""].mean()


def test_a_model_trained_on_simulator_traffic_uses_the_features(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    result = train_simulated(registry, days=26, seed=3, tx_per_day=2500, scenario=RICH)
    meta = registry.meta(result["version"])
    assert meta["source"] == "simulator"
    assert set(MERCHANT_FEATURES) <= set(meta["feature_names"])
    assert meta["feature_names"] == F.feature_names("gateway")
    assert registry.champion_version() == result["version"]
    lift = result["lift"]
    assert lift["with"]["test_rows"] == lift["without"]["test_rows"] > 0
    assert lift["with"]["features"] == lift["without"]["features"] + 2
    gain = dict(zip(meta["feature_names"],
                    registry.load(result["version"]).booster.feature_importance("gain"),
                    strict=True))
    assert gain["merchant_fraud_rate_7d"] > 0 and gain["device_reputation_score"] > 0


def test_the_demo_champion_is_trained_on_demo_shaped_runs(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    result = train_for_demo(registry, customers=3000, event_rate=5.0, span_s=300.0,
                            transactions=9000)
    meta = registry.meta(result["version"])
    assert meta["source"] == "simulator-demo" and registry.champion_version() == result["version"]
    assert result["runs"] == 6
    # Each run starts from empty state, as each demo does: no terminal history a week old.
    assert meta["feature_baselines"]["TERMINAL_ID_NB_TX_30DAY_WINDOW"]["edges"] == [0.0]
    assert isinstance(pd.Timestamp(meta["training_window"]["start"]), pd.Timestamp)
