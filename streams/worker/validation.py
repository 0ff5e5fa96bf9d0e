"""Checks a decoded record must pass before it may influence a decision.

Avro guarantees shape, not sense: a negative amount or an event time a day in the future decodes
fine and would poison velocity and spend features. Each check returns a named reason so the
dead-letter counter tells an SRE what kind of bad input is arriving.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from scoring.fx import EUR_PER_UNIT

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
CURRENCY = re.compile(r"^[A-Z]{3}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
MAX_ROUTE_LATENCY_MS = 600_000


@dataclass(frozen=True)
class Limits:
    max_amount: Decimal
    max_future_skew_s: float


@dataclass(frozen=True)
class Rejection:
    reason: str
    error: str


def _event_time(record: Mapping[str, Any], now: datetime, limits: Limits) -> Rejection | None:
    ts: datetime = record["event_time"]
    if (ts - now).total_seconds() > limits.max_future_skew_s:
        skew = limits.max_future_skew_s
        return Rejection("future_event_time", f"event_time {ts.isoformat()} is more than "
                                              f"{skew:.0f}s ahead of the worker clock")
    if ts < EARLIEST:
        return Rejection("invalid_value", f"event_time {ts.isoformat()} is before {EARLIEST.year}")
    return None


def check_transaction(tx: Mapping[str, Any], now: datetime, limits: Limits) -> Rejection | None:
    for name in ("transaction_id", "card_token", "customer_id", "merchant_id", "issuer_id"):
        if not str(tx[name]).strip():
            return Rejection("invalid_value", f"{name} is empty")
    amount: Decimal = tx["amount"]
    if amount < 0:  # zero is a card-verification authorization, a real and common request
        return Rejection("invalid_value", f"amount must not be negative, got {amount}")
    if amount > limits.max_amount:
        return Rejection("invalid_value", f"amount {amount} exceeds the limit {limits.max_amount}")
    if not CURRENCY.match(tx["currency"]):
        return Rejection("invalid_value", f"currency {tx['currency']!r} is not an ISO 4217 code")
    if tx["currency"] not in EUR_PER_UNIT:
        return Rejection("invalid_value", f"currency {tx['currency']} has no reference rate: "
                                          "amount features would be meaningless")
    if not COUNTRY.match(tx["country"]):
        return Rejection("invalid_value", f"country {tx['country']!r} is not ISO 3166 alpha-2")
    geo = tx.get("geo")
    if geo is not None and not (-90 <= geo["lat"] <= 90 and -180 <= geo["lon"] <= 180):
        return Rejection("invalid_value", f"geo ({geo['lat']}, {geo['lon']}) is off the globe")
    return _event_time(tx, now, limits)


def check_label(label: Mapping[str, Any], now: datetime, limits: Limits) -> Rejection | None:
    for name in ("transaction_id", "card_token"):
        if not str(label[name]).strip():
            return Rejection("invalid_value", f"{name} is empty")
    if label["known_at"] < label["transaction_time"]:
        return Rejection("invalid_value", "known_at precedes the transaction: a label from the "
                                          "future of its own transaction")
    return _event_time({"event_time": label["transaction_time"]}, now, limits)


def check_outcome(outcome: Mapping[str, Any], now: datetime, limits: Limits) -> Rejection | None:
    for name in ("transaction_id", "route", "issuer_id"):
        if not str(outcome[name]).strip():
            return Rejection("invalid_value", f"{name} is empty")
    latency = outcome["latency_ms"]
    if not 0 <= latency <= MAX_ROUTE_LATENCY_MS:
        return Rejection("invalid_value", f"latency_ms {latency} outside 0..{MAX_ROUTE_LATENCY_MS}")
    return _event_time(outcome, now, limits)


Check = Callable[[Mapping[str, Any], datetime, Limits], Rejection | None]
CHECKS: dict[str, Check] = {
    "transaction": check_transaction,
    "authorization_outcome": check_outcome,
    "label": check_label,
}
