"""Valid records for tests, built field by field so each test can break exactly one thing."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any


def transaction(i: int, card: str | None = None, amount: str = "42.50",
                when: datetime | None = None, **overrides: Any) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "transaction_id": f"tx-{i:08d}",
        "card_token": card or f"tok_{i % 97:04x}",
        "customer_id": f"cust-{i % 97}",
        "merchant_id": f"m-{i % 13}",
        "terminal_id": f"term-{i % 29}",
        "merchant_name": "Corner Grocer",
        "mcc": "5411",
        "amount": Decimal(amount),
        "currency": "EUR",
        "country": "DE",
        "geo": {"lat": 52.52, "lon": 13.405},
        "device_id": f"dev-{i % 53}",
        "channel": "POS",
        "issuer_bin": "400000",
        "issuer_id": "issuer-a",
        "event_time": when or (datetime.now(UTC) - timedelta(seconds=5)),
    }
    tx.update(overrides)
    if "merchant_id" not in overrides:  # a terminal belongs to one merchant, as in the world
        tx["merchant_id"] = f"m-{zlib.crc32(str(tx['terminal_id']).encode()) % 13}"
    return tx


def outcome(tx: dict[str, Any], result: str = "APPROVED", **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "transaction_id": tx["transaction_id"],
        "card_token": tx["card_token"],
        "route": "acq-1",
        "issuer_id": tx["issuer_id"],
        "result": result,
        "response_code": "00" if result == "APPROVED" else "05",
        "latency_ms": 180,
        "attempt": 1,
        "event_time": tx["event_time"],
    }
    out.update(overrides)
    return out


def degrading_outcomes(issuer: str, routes: tuple[str, ...], start: datetime, n: int = 6000,
                       degrade_from: int = 4800, seed: int = 5
                       ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(transaction, outcome) pairs at 50 attempts/s of event time for one issuer: 80% on the
    first route, the rest spread over the others; from attempt ``degrade_from`` the first route
    delivers half its attempts (0.92 before, and on the others throughout)."""
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        when = start + timedelta(milliseconds=20 * i)
        route = routes[0] if rng.random() < 0.8 else rng.choice(routes[1:])
        p = 0.5 if route == routes[0] and i >= degrade_from else 0.92
        result = "APPROVED" if rng.random() < p else rng.choice(("ERROR", "TIMEOUT"))
        tx = transaction(i, when=when) | {"issuer_id": issuer}
        pairs.append((tx, outcome(tx, result, route=route, event_time=when)))
    return pairs
