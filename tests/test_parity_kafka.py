"""Train/serve parity through the real broker: handbook days replayed through Kafka into the
worker give, for every feature of every transaction, the offline builder's value.

The replay starts where the data starts (2018-04-01), as the offline builder does, so both have
the same history; nine days make the delayed terminal windows (which open after seven) non-empty.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from scoring import features as F
from streams.bench.evaluate import _raw_rows, parity, replay_and_collect
from streams.config import HANDBOOK_DIR, Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

START, END = date(2018, 4, 1), date(2018, 4, 9)


def test_replayed_features_equal_the_offline_builder(
        make_settings: Callable[..., Settings]) -> None:
    raw_dir = HANDBOOK_DIR / "raw"
    if not raw_dir.is_dir():
        pytest.skip(f"handbook data not found at {raw_dir} (read in place, never copied)")
    settings = make_settings()
    collector, replay = replay_and_collect(settings, raw_dir, START, END)
    raw = _raw_rows(raw_dir, START, END)
    assert replay["transactions"] == len(raw) > 80_000
    offline = F.build_offline(raw)
    names = F.feature_names("handbook")
    streamed = raw.copy()
    rows = [collector.features["hb-" + str(i)] for i in raw["TRANSACTION_ID"]]
    for name in names:
        streamed[name] = [r[name] for r in rows]
    gaps = parity(streamed, offline, names)
    print(f"\n[parity] {len(raw)} transactions x {len(names)} features through Kafka "
          f"({replay['throughput_tps']} tx/s): worst relative error "
          f"{max(gaps.values()):.1e}")
    assert max(gaps.values()) <= 1e-9, {k: v for k, v in gaps.items() if v > 1e-9}
    # The delayed terminal windows did open: the comparison covered live terminal risk.
    assert (streamed["TERMINAL_ID_NB_TX_1DAY_WINDOW"] > 0).sum() > 5_000
    assert (streamed["TERMINAL_ID_RISK_30DAY_WINDOW"] > 0).sum() > 10
