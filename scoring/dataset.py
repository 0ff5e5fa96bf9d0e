"""The handbook data set offline: its Parquet files, the cached feature build, the reference check.

Training and the benchmarks need every handbook transaction with every feature; building them
replays the whole history through ``scoring.features`` (the worker's own state functions), so
the result is cached, keyed by the data and the code that builds it. The data set is read in
place from the directory the caller names (raw/ and transformed/ Parquet, one file per month),
never copied into the repository. pandas and pyarrow are imported inside the functions, as in
``scoring.features``, so importing this module costs nothing until it is used.

``main`` builds (or reads) the features and prints the largest error against the handbook's own
reference columns; the deployment's command passes it where the data and the cache live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scoring import features

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime
    from pathlib import Path

    import pandas as pd

# The handbook's own features in transformed/, computed by its authors over the whole history.
REFERENCE_COLUMNS = tuple(f.name for f in features.FEATURES[:15])
# Differences this small count as equal in the reference check (see compare_with_reference).
ABS_FLOOR = 1e-12


def _parquet_files(data_dir: Path, kind: str) -> list[Path]:
    from pathlib import Path

    files = sorted((Path(data_dir) / kind).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {kind}/*.parquet under {data_dir}")
    return files


def load_handbook(data_dir: Path, kind: str = "raw", *,
                  start: str | datetime | None = None, end: str | datetime | None = None,
                  customers: Iterable[int] | None = None, terminals: Iterable[int] | None = None
                  ) -> pd.DataFrame:
    """Rows of ``kind`` ("raw" or "transformed") with start <= TX_DATETIME < end, in time order.

    Filters are pushed down to Parquet, so a slice of a few customers or terminals costs little.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = _parquet_files(data_dir, kind)
    dataset = ds.dataset([str(p) for p in files], format="parquet")
    conditions = []
    when = ds.field("TX_DATETIME")
    if start is not None:
        conditions.append(when >= pa.scalar(pd.Timestamp(start).to_datetime64(),
                                            pa.timestamp("us")))
    if end is not None:
        conditions.append(when < pa.scalar(pd.Timestamp(end).to_datetime64(),
                                           pa.timestamp("us")))
    if customers is not None:
        conditions.append(pc.is_in(ds.field("CUSTOMER_ID"),
                                   pa.array(sorted(customers), pa.int32())))
    if terminals is not None:
        conditions.append(pc.is_in(ds.field("TERMINAL_ID"),
                                   pa.array(sorted(terminals), pa.int32())))
    condition = None
    for c in conditions:
        condition = c if condition is None else condition & c
    frame = dataset.to_table(filter=condition).to_pandas()
    return frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable").reset_index(
        drop=True)


def inputs_hash(data_dir: Path) -> str:
    """sha256 over the raw files' names and bytes and the code that builds the features
    (``scoring.features`` and this module): the cache key."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for path in _parquet_files(data_dir, "raw"):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for code in (features.__file__, __file__):
        digest.update(Path(code).read_bytes())
    return digest.hexdigest()[:16]


def offline_features(data_dir: Path, cache_dir: Path, *, refresh: bool = False) -> pd.DataFrame:
    """Every handbook transaction with every handbook feature, from the cache when it is fresh.

    The whole history is built at once (about a minute) because the 30- and 37-day windows need
    it; the result is cached under ``cache_dir``, keyed by ``inputs_hash``, so a change to the
    data or to the code that builds it misses the cache and nothing stale is served.
    """
    import pandas as pd

    path = cache_dir / f"handbook-{inputs_hash(data_dir)}.parquet"
    if path.exists() and not refresh:
        return pd.read_parquet(path)
    frame = features.build_offline(load_handbook(data_dir, "raw"))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    frame.to_parquet(partial, index=False)
    partial.replace(path)  # atomic: a reader never sees half a file
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
                           columns: Sequence[str] = REFERENCE_COLUMNS, *,
                           exclude: pd.Series | None = None) -> dict[str, float]:
    """Per reference column, the max relative error |ours - ref| / |ref| over matching rows.

    Rows are matched on TRANSACTION_ID. Differences up to ``ABS_FLOOR`` count as 0: where a
    card's window holds only zero amounts the reference carries pandas' rolling-sum residue
    (e.g. -3.6e-15) instead of 0, a rounding artefact rather than a different value.
    ``exclude`` (a boolean mask over ``ours``) leaves rows out, e.g. ``same_second_ties(ours)``.
    """
    import numpy as np

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
        diff = np.abs(a - b)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff <= ABS_FLOOR, 0.0, diff / np.abs(b))
        errors[column] = float(rel.max()) if len(rel) else 0.0
    return errors


def main(argv: Sequence[str] | None = None, *, data_dir: Path, cache_dir: Path) -> int:
    """The reference check as a command: ``data_dir`` is the default of ``--data-dir``, and the
    features are cached under ``cache_dir``."""
    import argparse
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser(
        description="Build (or read) the offline features, time the build and print the largest "
                    "error against the handbook's reference columns.")
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    parser.add_argument("--refresh", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ours = offline_features(args.data_dir, cache_dir, refresh=args.refresh)
    seconds = time.perf_counter() - started
    print(f"{len(ours):,} transactions in {seconds:.1f} s "
          f"({seconds / len(ours) * 1e6:.1f} us each{'' if args.refresh else ', maybe cached'})")
    reference = load_handbook(args.data_dir, "transformed")
    ties = same_second_ties(ours)
    every = compare_with_reference(ours, reference)
    untied = compare_with_reference(ours, reference, exclude=ties)
    print(f"max relative error vs the reference ({int(ties.sum())} same-second card ties "
          "excluded / all rows):")
    for column in REFERENCE_COLUMNS:
        print(f"  {column:<40}{untied[column]:>12.3g}{every[column]:>12.3g}")
    return 0
