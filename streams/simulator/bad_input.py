"""Malformed gateway records, one of each kind the worker must dead-letter.

The demo mixes these into live traffic so a person can watch bad input land in the dead-letter
topic while verdicts keep flowing. No card numbers here: redaction is proven by the tests with
their own test PANs, not by demo traffic.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.clock import to_millis
from schemas.codec import Codec


def as_json(tx: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON a gateway without Avro sends: decimals as strings, times as epoch millis."""
    out: dict[str, Any] = {}
    for k, v in tx.items():
        if isinstance(v, Decimal):
            out[k] = str(v)
        elif isinstance(v, datetime):
            out[k] = to_millis(v)
        else:
            out[k] = v
    return out


def bad_records(template: Mapping[str, Any], codec: Codec, topic: str, count: int,
                seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """Yield (expected dead-letter reason, bytes) for `count` records, cycling through kinds."""
    rng = random.Random(seed)
    good = codec.encode("transaction", template, topic=topic)
    as_json_record = as_json(template)
    kinds: list[tuple[str, Any]] = [
        ("undecodable", lambda: bytes(rng.getrandbits(8) for _ in range(40))),
        ("unknown_schema", lambda: b"\xc3\x01" + struct.pack("<Q", rng.getrandbits(64)) + b"\x00"),
        ("schema_invalid", lambda: good[: len(good) // 2]),
        ("missing_field", lambda: json.dumps(
            {k: v for k, v in as_json_record.items() if k != "amount"}).encode()),
        ("wrong_type", lambda: json.dumps({**as_json_record, "amount": "twelve"}).encode()),
        ("invalid_value", lambda: codec.encode(
            "transaction", {**template, "amount": Decimal("-10.00")}, topic=topic)),
        ("future_event_time", lambda: codec.encode(
            "transaction", {**template, "event_time": datetime.now(UTC) + timedelta(days=3)},
            topic=topic)),
    ]
    for i in range(count):
        reason, make = kinds[i % len(kinds)]
        # Random bytes could start like JSON or an Avro header; a leading 0xff starts neither.
        yield reason, (b"\xff" + make()) if reason == "undecodable" else make()
