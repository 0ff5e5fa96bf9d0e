"""Event time on the wire is epoch milliseconds (Avro ``timestamp-millis``); this converts it.

One helper for every layer, so a transaction's time means the same instant in the simulator, the
worker, the features and the training set. Conversion truncates towards the past, as Avro does.

    >>> from datetime import UTC, datetime
    >>> to_millis(datetime(2024, 4, 1, tzinfo=UTC))
    1711929600000
    >>> from_millis(1711929600000)
    datetime.datetime(2024, 4, 1, 0, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def to_millis(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(moment.timestamp() * 1000)


def from_millis(ms: float) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def millis_of(value: datetime | float) -> int:
    """Epoch milliseconds of a datetime or of a number that already is milliseconds."""
    return to_millis(value) if isinstance(value, datetime) else int(value)


def now_millis() -> int:
    """The wall clock in epoch milliseconds."""
    return int(time.time() * 1000)


def whole_millis(moment: datetime) -> datetime:
    """The datetime with its sub-millisecond part dropped: what survives a trip through Avro."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
