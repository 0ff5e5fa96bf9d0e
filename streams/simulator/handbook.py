"""Replaying the Fraud Detection Handbook's public transactions as gateway traffic.

The handbook data has known fraud and published reference features, so replaying it lets the
project's streaming features and models be checked against the book. Its protocol makes every
label known a fixed delay after the transaction; the replay honours that by merging labels into the
stream at their known_at, so a consumer can never see a label before it could have existed.

Files are read one at a time, only the needed columns and row groups, and converted in batches, so
a month (~300k rows) never becomes one giant list of dicts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
           "TX_FRAUD", "TX_FRAUD_SCENARIO")
DEFAULT_LABEL_DELAY_DAYS = 7.0
ISSUER_ID = "hb-issuer"
_BATCH_ROWS = 8192
# TX_FRAUD_SCENARIO codes as the handbook defines them.
FRAUD_SCENARIOS = {1: "hb-amount-over-220", 2: "hb-compromised-terminal",
                   3: "hb-compromised-customer"}


@dataclass(frozen=True)
class ReplayEvent:
    kind: Literal["transaction", "label"]
    event_time: datetime  # the transaction's time, or the label's known_at
    record: dict[str, Any]


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, day after end 00:00): ``end`` is inclusive."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return datetime.combine(start, time()), datetime.combine(end + timedelta(days=1), time())


def _row_groups(path: Path, low: datetime, high: datetime) -> tuple[pq.ParquetFile, list[int]]:
    """Row groups whose TX_DATETIME statistics overlap [low, high); all of them if unknown."""
    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    column = parquet.schema_arrow.get_field_index("TX_DATETIME")
    wanted = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is not None and stats.has_min_max and (stats.max < low or stats.min >= high):
            continue
        wanted.append(i)
    return parquet, wanted


def _file_start(path: Path) -> datetime:
    parquet = pq.ParquetFile(path)
    column = parquet.schema_arrow.get_field_index("TX_DATETIME")
    mins = [parquet.metadata.row_group(i).column(column).statistics
            for i in range(parquet.metadata.num_row_groups)]
    known = [s.min for s in mins if s is not None and s.has_min_max]
    return min(known) if known else datetime.min


def _read_range(path: Path, low: datetime, high: datetime) -> pa.Table | None:
    parquet, groups = _row_groups(path, low, high)
    if not groups:
        return None
    table = parquet.read_row_groups(groups, columns=list(COLUMNS))
    times = table["TX_DATETIME"]
    mask = pc.and_(pc.greater_equal(times, pa.scalar(low, times.type)),
                   pc.less(times, pa.scalar(high, times.type)))
    table = table.filter(mask)
    if table.num_rows == 0:
        return None
    return table.sort_by([("TX_DATETIME", "ascending"), ("TRANSACTION_ID", "ascending")])


def _iter_rows(
    data_dir: Path, start: date, end: date
) -> Iterator[tuple[dict[str, Any], int, int]]:
    """Rows from ``start`` to ``end`` (inclusive) in time order: (record, TX_FRAUD, scenario)."""
    low, high = _bounds(start, end)
    paths = sorted(Path(data_dir).glob("*.parquet"), key=_file_start)
    if not paths:
        raise FileNotFoundError(f"no .parquet files in {data_dir}")
    last: datetime | None = None
    for path in paths:
        table = _read_range(path, low, high)
        if table is None:
            continue
        for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
            for row in batch.to_pylist():
                moment: datetime = row["TX_DATETIME"].replace(tzinfo=UTC)
                if last is not None and moment < last:
                    raise ValueError(f"{path.name} overlaps an earlier file at {moment}")
                last = moment
                yield (_transaction(row, moment), int(row["TX_FRAUD"]),
                       int(row["TX_FRAUD_SCENARIO"]))


def _transaction(row: dict[str, Any], moment: datetime) -> dict[str, Any]:
    terminal = f"hb-t{row['TERMINAL_ID']}"
    return {
        "transaction_id": f"hb-{row['TRANSACTION_ID']}",
        "card_token": f"hb-c{row['CUSTOMER_ID']}",
        "customer_id": str(row["CUSTOMER_ID"]),
        "merchant_id": terminal,
        "terminal_id": terminal,
        "merchant_name": None,
        "mcc": None,
        "amount": Decimal(f"{row['TX_AMOUNT']:.2f}"),
        "currency": "EUR",
        "country": "ZZ",  # the data has no geography
        "geo": None,
        "device_id": None,
        "channel": "UNKNOWN",
        "issuer_bin": "000000",
        "issuer_id": ISSUER_ID,
        "event_time": moment,
    }


def iter_handbook(
    data_dir: Path,
    start: date,
    end: date,
    *,
    label_delay_days: float = DEFAULT_LABEL_DELAY_DAYS,
    label_lead: timedelta = timedelta(0),
    fraud_labels_only: bool = False,
) -> Iterator[ReplayEvent]:
    """Transactions and their labels, merged in event-time order.

    Every transaction gets a FRAUD or GENUINE label known ``label_delay_days`` later; a label is
    yielded just before the first transaction after its known_at, and the rest after the last
    transaction, so the stream never shows a label before it is known.

    ``label_lead`` releases each label that much earlier in the stream (its known_at is
    unchanged). Consumers that honour known_at lose nothing by it, and it gives a replay at full
    speed a margin against the race between the labels and transactions topics: a worker
    consuming both can otherwise see a transaction a few milliseconds before a label that,
    in event time, came first. ``fraud_labels_only`` leaves out GENUINE labels: terminal risk
    needs only the frauds (an unlabelled transaction a week old counts as genuine), and the
    replay's traffic halves.
    """
    delay = timedelta(days=label_delay_days)
    pending: deque[tuple[datetime, dict[str, Any]]] = deque()  # constant delay keeps it sorted
    for record, fraud, scenario in _iter_rows(data_dir, start, end):
        moment: datetime = record["event_time"]
        while pending and pending[0][0] - label_lead <= moment:
            known_at, label = pending.popleft()
            yield ReplayEvent("label", known_at, label)
        known_at = moment + delay
        if fraud_labels_only and not fraud:
            yield ReplayEvent("transaction", moment, record)
            continue
        pending.append((known_at, {
            "transaction_id": record["transaction_id"],
            "card_token": record["card_token"],
            "terminal_id": record["terminal_id"],
            "merchant_id": record["merchant_id"],  # the terminal: the data has no merchants
            "device_id": None,
            "label": "FRAUD" if fraud else "GENUINE",
            "fraud_scenario": (FRAUD_SCENARIOS.get(scenario, f"hb-scenario-{scenario}")
                               if fraud else None),
            "transaction_time": moment,
            "known_at": known_at,
            "source": "SIMULATOR",
        }))
        yield ReplayEvent("transaction", moment, record)
    while pending:
        known_at, label = pending.popleft()
        yield ReplayEvent("label", known_at, label)
