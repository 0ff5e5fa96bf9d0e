"""Merchant and device features (scoring.merchant): event time, idempotence, bounds, and their
absence on handbook-shaped transactions."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from scoring import features as F
from scoring import merchant as M

DAY = F.DAY_MS
HOUR = F.HOUR_MS
T0 = 1_700_000_000_000


def _tx(i: int, t_ms: int, card: str = "c1", device: str | None = "d1",
        merchant: str = "m1", terminal: str = "term-1") -> dict[str, Any]:
    return {"transaction_id": f"tx{i}", "card_token": card, "merchant_id": merchant,
            "terminal_id": terminal, "device_id": device, "t": t_ms}


def _label(tx: dict[str, Any], known_ms: int, fraud: bool = True) -> dict[str, Any]:
    return {"transaction_id": tx["transaction_id"], "card_token": tx["card_token"],
            "merchant_id": tx["merchant_id"], "terminal_id": tx["terminal_id"],
            "device_id": tx["device_id"], "known_at": known_ms, "fraud": fraud}


def _apply(table: dict[str, Any], event: dict[str, Any]) -> None:
    if "known_at" in event:
        table.update(M.observe_label(table, event, event["t_tx"], event["known_at"],
                                     event["fraud"]))
    else:
        table.update(M.observe_tx(table, event, event["t"]))


def _history() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ten payments at m1 over two days, two of them fraud known a day and three days later."""
    txs = [_tx(i, T0 + i * 5 * HOUR, card=f"c{i % 4}") for i in range(10)]
    labels = [{**_label(txs[1], txs[1]["t"] + DAY), "t_tx": txs[1]["t"]},
              {**_label(txs[2], txs[2]["t"] + 3 * DAY), "t_tx": txs[2]["t"]}]
    return txs, labels


def test_merchant_fraud_rate_counts_a_label_only_once_known() -> None:
    txs, labels = _history()
    table: dict[str, Any] = {}
    for event in [*labels, *txs]:  # labels delivered early: known_at still governs
        _apply(table, event)
    state = table[M.merchant_key("m1")]
    first_known = labels[0]["known_at"]
    assert M.merchant_fraud_rate(state, first_known - 1) == 0.0
    n = sum(1 for tx in txs if first_known - 7 * DAY < tx["t"] <= first_known)
    assert M.merchant_fraud_rate(state, first_known) == pytest.approx(1 / n)
    both = labels[1]["known_at"]
    n = sum(1 for tx in txs if both - 7 * DAY < tx["t"] <= both)
    assert M.merchant_fraud_rate(state, both) == pytest.approx(2 / n)
    # A week after the first label became known it no longer counts; the second still does.
    week = first_known + 7 * DAY
    n = sum(1 for tx in txs if week - 7 * DAY < tx["t"] <= week)
    assert M.merchant_fraud_rate(state, week) == pytest.approx(1 / n)
    assert M.merchant_fraud_rate(state, labels[1]["known_at"] + 7 * DAY) == 0.0


def test_state_is_idempotent_and_independent_of_arrival_order() -> None:
    txs, labels = _history()
    events = [*txs, *labels]
    once: dict[str, Any] = {}
    for event in events:
        _apply(once, event)
    shuffled = events * 2  # every event repeated, in another order
    random.Random(3).shuffle(shuffled)
    twice: dict[str, Any] = {}
    for event in shuffled:
        _apply(twice, event)
    assert json.dumps(once, sort_keys=True) == json.dumps(twice, sort_keys=True)
    for t in (T0, T0 + DAY, T0 + 3 * DAY, T0 + 6 * DAY):
        row = {k: round(v, 12) for k, v in M.features(once, txs[0], t).items()}
        assert row == {k: round(v, 12) for k, v in M.features(twice, txs[0], t).items()}


def test_the_earliest_of_two_fraud_labels_counts_once() -> None:
    tx = _tx(1, T0)
    table: dict[str, Any] = {}
    _apply(table, tx)
    for known in (T0 + 3 * DAY, T0 + DAY):  # a chargeback, then the issuer's earlier report
        _apply(table, {**_label(tx, known), "t_tx": T0})
    state = table[M.merchant_key("m1")]
    assert M.merchant_fraud_rate(state, T0 + DAY) == 1.0
    assert M.merchant_fraud_rate(state, T0 + 3 * DAY) == 1.0  # not 2: one transaction


def test_genuine_labels_change_nothing() -> None:
    tx = _tx(1, T0)
    assert M.observe_label({}, _label(tx, T0 + DAY, fraud=False), T0, T0 + DAY, False) == {}


def test_device_reputation_formula() -> None:
    table: dict[str, Any] = {}
    card_testing = [_tx(i, T0 + i * 60_000, card=f"stolen{i}") for i in range(12)]
    scores = []
    for tx in card_testing:
        _apply(table, tx)
        scores.append(M.features(table, tx, tx["t"])["device_reputation_score"])
    # (distinct cards in 24 h - 1) / 9: 0 for the first, 1 from the tenth on.
    assert scores[:3] == [0.0, pytest.approx(1 / 9), pytest.approx(2 / 9)]
    assert scores[9:] == [1.0, 1.0, 1.0]
    # A day later the cards have left the window; two known frauds add 2/3.
    later = _tx(99, T0 + 2 * DAY, card="stolen0")
    known = T0 + 3 * DAY // 2  # the cards' 24 hours are over by then
    for tx in card_testing[:2]:
        _apply(table, {**_label(tx, known), "t_tx": tx["t"]})
    _apply(table, later)
    assert M.features(table, later, later["t"])["device_reputation_score"] == \
        pytest.approx(2 / 3)
    # ... but not before they were known.
    state = table[M.device_key("m1", "d1")]
    assert M.device_reputation(state, known - 1) == 0.0
    assert M.device_reputation(state, known) == pytest.approx(2 / 3)


def test_no_device_is_neutral_and_devices_are_per_merchant() -> None:
    table: dict[str, Any] = {}
    pos = _tx(1, T0, device=None)
    _apply(table, pos)
    assert M.features(table, pos, T0) == {"merchant_fraud_rate_7d": 0.0,
                                          "device_reputation_score": M.NO_DEVICE_SCORE}
    a = _tx(2, T0, card="a", merchant="m1")
    b = _tx(3, T0, card="b", merchant="m2", terminal="term-2")
    for tx in (a, b):
        _apply(table, tx)
    # The same device at two merchants: each merchant's partition sees one card.
    assert M.features(table, b, T0)["device_reputation_score"] == 0.0
    assert M.device_key("m1", "d1") in table and M.device_key("m2", "d1") in table


def test_handbook_shaped_transactions_have_neither_feature() -> None:
    handbook = _tx(1, T0, device=None, merchant="hb-t7", terminal="hb-t7")
    table: dict[str, Any] = {}
    assert M.observe_tx(table, handbook, T0) == {}
    assert M.features(table, handbook, T0) == {}
    assert M.observe_label(table, {**_label(handbook, T0 + DAY)}, T0, T0 + DAY, True) == {}
    merchant_features = {f.name for f in F.FEATURES if f.entity == "merchant"}
    assert not merchant_features & set(F.feature_names("handbook"))
    assert merchant_features <= set(F.feature_names("gateway"))


def test_state_stays_bounded() -> None:
    table: dict[str, Any] = {}
    for i in range(3 * M.MAX_MERCHANT_ENTRIES):
        _apply(table, _tx(i, T0 + i * 1000, card=f"c{i}"))
    merchant = table[M.merchant_key("m1")]
    device = table[M.device_key("m1", "d1")]
    assert len(merchant["t"]) == M.MAX_MERCHANT_ENTRIES
    assert len(device["t"]) == len(device["c"]) == M.MAX_DEVICE_ENTRIES
    # Saturated: the rate is over the span the kept transactions cover, so it stays a rate.
    tx = _tx(10**6, T0 + 3 * M.MAX_MERCHANT_ENTRIES * 1000)
    for i in range(5):
        old = _tx(3 * M.MAX_MERCHANT_ENTRIES - 1 - i, 0)
        _apply(table, {**_label(old, tx["t"]), "t_tx": T0 + (3 * M.MAX_MERCHANT_ENTRIES - 1 - i)
                       * 1000})
    _apply(table, tx)
    assert 0 < M.features(table, tx, tx["t"])["merchant_fraud_rate_7d"] < 0.01
    # Far later, pruning empties the windows.
    far = _tx(10**7, T0 + 60 * DAY)
    _apply(table, far)
    assert len(table[M.merchant_key("m1")]["t"]) == 1
    assert table[M.merchant_key("m1")]["fk"] == {}
