"""Gateway-shaped traffic offline: every gateway feature of every transaction, in event time.

``scoring.features.build_offline`` does this for the handbook's layout; gateway traffic (the
simulator's, or a gateway's log) carries more (countries, places, devices, merchants,
authorization outcomes, labels with their own ``known_at``), so it has its own replay. It calls
the worker's own state functions in the worker's order, so a model trained on its rows and the
worker serving that model cannot disagree about a feature:

- an authorization outcome updates its card's decline history at its event time;
- a label is applied once its ``known_at`` has come (the simulator publishes it then, and the
  worker forwards it to the merchant's scoring partition): terminal risk, merchant and device;
- a transaction is observed in its card's state, then in its terminal's, merchant's and device's
  (the terminal stage's one table: terminal ids and ``scoring.merchant``'s namespaced keys), and
  its row is read as ``CardStage.features`` and ``TerminalStage.prepare`` read it.

Records are plain dicts shaped like schemas/transaction.avsc, authorization_outcome.avsc and
label.avsc (tz-aware datetimes, Decimal amounts), as the simulator makes them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from schemas.clock import to_millis
from scoring import features as F
from scoring import merchant as M
from scoring.fx import to_eur

if TYPE_CHECKING:
    import pandas as pd

FRAUD_LABELS = ("FRAUD", "CHARGEBACK")


def gateway_row(card: dict[str, Any] | None, outcomes: dict[str, Any] | None,
                table: dict[str, Any], tx: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, float]]:
    """Observe ``tx`` in its card's state (returned) and in ``table`` (updated in place); its
    row of every feature the worker computes for it."""
    t_ms = to_millis(tx["event_time"])
    amount = to_eur(tx["amount"], tx["currency"])
    geo = (tx["geo"]["lat"], tx["geo"]["lon"]) if tx.get("geo") else None
    card = F.card_observe(card, tx["transaction_id"], t_ms, amount, tx.get("country"), geo)
    row = F.transaction_features(t_ms, amount)
    row.update(F.card_window_features(card, t_ms, amount))
    row.update(F.card_profile_features(card, t_ms, tx.get("country"), geo))
    row["card_decline_rate_7d"] = F.card_decline_rate(outcomes, t_ms)
    terminal = tx["terminal_id"]
    table[terminal] = F.terminal_observe_tx(table.get(terminal), tx["transaction_id"], t_ms)
    row.update(F.terminal_features(table[terminal], t_ms))
    table.update(M.observe_tx(table, tx, t_ms))
    row.update(M.features(table, tx, t_ms))
    return card, row


def apply_label(table: dict[str, Any], label: Mapping[str, Any]) -> None:
    """What the terminal stage does with a label (``TerminalStage.observe_label``)."""
    terminal = label.get("terminal_id")
    if not terminal:
        return
    t_ms = to_millis(label["transaction_time"])
    fraud = label["label"] in FRAUD_LABELS
    table[terminal] = F.terminal_observe_label(table.get(terminal), label["transaction_id"],
                                               t_ms, fraud)
    table.update(M.observe_label(table, label, t_ms, to_millis(label["known_at"]), fraud))


def build_gateway_offline(transactions: Iterable[Mapping[str, Any]],
                          outcomes: Iterable[Mapping[str, Any]],
                          labels: Iterable[Mapping[str, Any]],
                          fraud: Mapping[str, str | None]) -> pd.DataFrame:
    """One row per transaction: every gateway feature, plus TRANSACTION_ID, TX_DATETIME (UTC,
    naive, as the training code expects), CUSTOMER_ID (the card, for the handbook's rule of
    leaving known-compromised cards out of a test), TERMINAL_ID, MERCHANT_ID, TX_FRAUD and
    TX_FRAUD_SCENARIO from ``fraud`` (transaction id -> its pattern; ground truth, which only
    the split and the metrics read, never a feature)."""
    import pandas as pd

    # One event queue in event time: outcomes and labels before a transaction at the same time.
    queue: list[tuple[int, int, int, Mapping[str, Any]]] = []
    for n, o in enumerate(outcomes):
        queue.append((to_millis(o["event_time"]), 0, n, o))
    for n, label in enumerate(labels):
        queue.append((to_millis(label["known_at"]), 1, n, label))
    for n, tx in enumerate(transactions):
        queue.append((to_millis(tx["event_time"]), 2, n, tx))
    heapq.heapify(queue)
    cards: dict[str, dict[str, Any]] = {}
    declines: dict[str, dict[str, Any]] = {}
    table: dict[str, Any] = {}
    names = F.feature_names("gateway")
    rows: list[dict[str, Any]] = []
    while queue:
        t_ms, kind, _, record = heapq.heappop(queue)
        if kind == 0:
            card = record["card_token"]
            declines[card] = F.card_outcome_observe(declines.get(card), record["transaction_id"],
                                                    t_ms, record["result"])
        elif kind == 1:
            apply_label(table, record)
        else:
            token = record["card_token"]
            cards[token], row = gateway_row(cards.get(token), declines.get(token), table, record)
            scenario = fraud.get(record["transaction_id"])
            rows.append({"TRANSACTION_ID": record["transaction_id"],
                         "TX_DATETIME": pd.Timestamp(t_ms, unit="ms"),
                         "CUSTOMER_ID": token, "TERMINAL_ID": record["terminal_id"],
                         "MERCHANT_ID": record["merchant_id"],
                         "TX_FRAUD": int(scenario is not None),
                         "TX_FRAUD_SCENARIO": scenario or "",
                         **{name: row[name] for name in names}})
    return pd.DataFrame(rows)
