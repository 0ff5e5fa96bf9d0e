"""`rakshit evaluate --train --test --delay-days` end to end through the real broker: a custom
window on a folder laid out like the handbook's, its days replayed through Kafka into a fresh
worker, the one-fold protocol run on the features the verdicts logged, parity with the offline
builder, and the summary JSON a protocol run writes.

Kept short as the parity test is: a week of a thousand of the handbook's cards, written under
the test's own tmp folder (read from the shared data set, never copied into the repository).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from scoring import dataset
from streams.cli import main
from streams.config import HANDBOOK_DIR, Settings

pytestmark = [pytest.mark.kafka]

# The keys `rakshit evaluate --protocol` writes (scoring.train.score_protocol plus the replay's).
PROTOCOL_KEYS = {"protocol", "ours", "published", "target", "folds", "params", "features",
                 "aggregation", "selection", "search", "seconds", "curves", "features_from",
                 "replay", "parity_max_relative_error", "parity_ok"}


def test_a_custom_window_is_evaluated_through_kafka(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if not any((HANDBOOK_DIR / "raw").glob("*.parquet")):
        pytest.skip(f"handbook data not found at {HANDBOOK_DIR} (read in place, never copied)")
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    rows = dataset.load_handbook(HANDBOOK_DIR, "raw", start="2018-07-01", end="2018-07-09",
                                 customers=range(1000))
    rows.to_parquet(data / "raw" / "transactions_2018-07.parquet")
    settings = make_settings()
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    summary = tmp_path / "summary.json"

    code = main(["evaluate", "--data", str(data), "--train", "2018-07-04", "2018-07-05",
                 "--test", "2018-07-07", "2018-07-08", "--delay-days", "1",
                 "--summary-json", str(summary), "--curves", str(tmp_path / "curves")])
    out = capsys.readouterr().out

    report = json.loads(summary.read_text())
    assert set(report) == PROTOCOL_KEYS | {"window"}
    assert code == 0 and report["parity_ok"], report["parity_max_relative_error"]
    assert "-> OK" in out and "ours (LightGBM)" in out
    assert report["protocol"] == "custom"
    assert report["window"] == {"train": ["2018-07-04", "2018-07-05"],
                                "test": ["2018-07-07", "2018-07-08"], "delay_days": 1}
    # Every row of the data was replayed and decided: the validation fold moved back
    # (train 07-01..07-02, test 07-04..07-05) starts on the folder's first day.
    assert report["replay"]["transactions"] == len(rows)
    assert report["selection"].startswith("validation Average Precision on the window moved "
                                          "back: train 2018-07-01..2018-07-02")
    assert len(report["search"]) == 24  # every candidate of the grid, at each tree count
    [fold] = report["folds"]
    assert fold["train"] == ["2018-07-04", "2018-07-05"]
    assert fold["test"] == ["2018-07-07", "2018-07-08"]
    assert 0 < fold["test_frauds"] < fold["test_rows"] < len(rows)
    for metric in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert report["ours"][metric] == fold[metric]
        assert 0.0 <= fold[metric] <= 1.0 and math.isfinite(fold[metric])
    assert fold["auc_roc"] > 0.6  # the streamed features carry signal
    assert all(Path(p).is_file() for p in report["curves"])
