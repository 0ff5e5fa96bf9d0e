"""The handbook data set as the models see it: raw rows, cached offline features, reference check.

The data is read in place from ``streams.config.HANDBOOK_DIR`` (``raw/`` and ``transformed/``
Parquet, one file per month) and never copied into the repository. Building features for the whole
history takes about a minute, so the result is cached under ``Settings().home / "features"``, keyed
by a hash of the input files and of the feature code: change either and the cache misses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from scoring import features
from streams.config import HANDBOOK_DIR, Settings

RAW_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
               "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO")
# The handbook's own features in transformed/, each computed by the authors over the whole history.
REFERENCE_COLUMNS = tuple(f.name for f in features.FEATURES[:15])
ABS_FLOOR = 1e-12


def _files(data_dir: Path, kind: str) -> list[Path]:
    files = sorted((Path(data_dir) / kind).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {kind}/*.parquet under {data_dir}")
    return files


def load(data_dir: Path = HANDBOOK_DIR, kind: str = "raw", *,
         start: str | datetime | None = None, end: str | datetime | None = None,
         customers: Iterable[int] | None = None, terminals: Iterable[int] | None = None,
         columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of ``kind`` ("raw" or "transformed") with start <= TX_DATETIME < end, in time order.

    Filters are pushed down to Parquet, so a slice of a few customers costs little.
    """
    dataset = ds.dataset([str(p) for p in _files(data_dir, kind)], format="parquet")
    cond: ds.Expression | None = None

    def both(expr: ds.Expression) -> ds.Expression:
        return expr if cond is None else cond & expr

    field = ds.field("TX_DATETIME")
    if start is not None:
        cond = both(field >= pa.scalar(pd.Timestamp(start).to_datetime64(), pa.timestamp("us")))
    if end is not None:
        cond = both(field < pa.scalar(pd.Timestamp(end).to_datetime64(), pa.timestamp("us")))
    if customers is not None:
        cond = both(pc.is_in(ds.field("CUSTOMER_ID"), pa.array(sorted(customers), pa.int32())))
    if terminals is not None:
        cond = both(pc.is_in(ds.field("TERMINAL_ID"), pa.array(sorted(terminals), pa.int32())))
    table = dataset.to_table(columns=list(columns) if columns else None, filter=cond)
    frame = table.to_pandas()
    return frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable").reset_index(
        drop=True)


def inputs_hash(data_dir: Path = HANDBOOK_DIR) -> str:
    """sha256 over the raw files' names and bytes and the feature code: the cache key."""
    digest = hashlib.sha256()
    for path in _files(data_dir, "raw"):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(Path(features.__file__).read_bytes())
    return digest.hexdigest()[:16]


def offline_features(data_dir: Path = HANDBOOK_DIR, cache_dir: Path | None = None,
                     *, refresh: bool = False) -> pd.DataFrame:
    """Every handbook transaction with every handbook feature, from the cache when it is fresh.

    The whole history is built at once because the 30-day and 37-day windows need it.
    """
    cache_dir = Settings.from_env().home / "features" if cache_dir is None else cache_dir
    path = Path(cache_dir) / f"handbook-{inputs_hash(data_dir)}.parquet"
    if path.exists() and not refresh:
        return pd.read_parquet(path)
    frame = features.build_offline(load(data_dir, "raw"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return frame


def same_second_ties(frame: pd.DataFrame) -> pd.Series:
    """Rows sharing their card and TX_DATETIME with another row.

    Features are read when a transaction is observed, so of two transactions of one card in the
    same second the first to arrive does not count the second (a stream cannot know the future);
    the offline replay delivers ties in TRANSACTION_ID order. The reference computed its windows
    with pandas' rolling over an unstable sort, which ordered 7 of the data's 22 such pairs
    against TRANSACTION_ID: those 14 rows differ from it by exactly the tied transaction, and no
    rule on the data reproduces that arbitrary order.
    """
    return frame.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)


def compare_with_reference(ours: pd.DataFrame, reference: pd.DataFrame,
                           columns: Sequence[str] = REFERENCE_COLUMNS,
                           *, exclude: pd.Series | None = None) -> dict[str, float]:
    """Per reference column, the max relative error |ours - ref| / |ref| over matching rows.

    Rows are matched on TRANSACTION_ID. Differences up to ``ABS_FLOOR`` count as 0: where a
    card's window holds only zero amounts the reference carries pandas' rolling-sum residue
    (e.g. -3.6e-15) instead of 0, which is a rounding artefact, not a different value.
    ``exclude`` (a boolean mask over ``ours``) leaves rows out, e.g. ``same_second_ties(ours)``.
    """
    mine = ours if exclude is None else ours[~exclude.to_numpy()]
    merged = mine[["TRANSACTION_ID", *columns]].merge(
        reference[["TRANSACTION_ID", *columns]], on="TRANSACTION_ID", suffixes=("", "_ref"),
        validate="one_to_one")
    if len(merged) != len(mine):
        raise ValueError(f"{len(mine) - len(merged)} of our rows have no reference row")
    errors: dict[str, float] = {}
    for column in columns:
        a = merged[column].to_numpy(dtype=np.float64)
        b = merged[f"{column}_ref"].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.abs(a - b)
            rel = np.where(diff <= ABS_FLOOR, 0.0, diff / np.abs(b))
        errors[column] = float(rel.max()) if len(rel) else 0.0
    return errors
