"""Protocols, training and the registry on small data: the handbook's test-set rule, that the
hyperparameter search never looks at test weeks, reproducible models, and registry round trips."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scoring import dataset
from scoring import features as F
from scoring import registry as R
from scoring import train as T
from streams.config import HANDBOOK_DIR

NAMES = F.feature_names("handbook")


def _synthetic(first: str, last: str, per_day: int = 150, seed: int = 0) -> pd.DataFrame:
    """Handbook-shaped features with one planted signal: frauds have larger amounts."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(first, last, freq="D")
    n = len(days) * per_day
    when = np.repeat(days.to_numpy(), per_day) + rng.integers(0, 86_400, n).astype(
        "timedelta64[s]")
    fraud = (rng.random(n) < 0.04).astype(np.int8)
    frame = pd.DataFrame({name: rng.normal(size=n) for name in NAMES})
    frame["TX_AMOUNT"] += 3.0 * fraud
    frame["TRANSACTION_ID"] = np.arange(n)
    frame["TX_DATETIME"] = when
    frame["CUSTOMER_ID"] = rng.integers(0, 400, n)
    frame["TX_FRAUD"] = fraud
    return frame


def _day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


# -- the protocol ------------------------------------------------------------------------------


def test_handbook_split_drops_cards_as_their_frauds_become_known() -> None:
    rows = [  # (day, card, fraud)
        ("2018-07-26", "X", 1),  # training fraud: X is out of every test day
        ("2018-08-01", "Y", 1),  # first delay day: Y is out from the second test day on
        ("2018-08-07", "Z", 1),  # last delay day: known only after this test week
    ]
    for offset in range(7):
        test_day = (_day("2018-08-08") + timedelta(days=offset)).strftime("%Y-%m-%d")
        rows += [(test_day, card, 0) for card in ("X", "Y", "Z", "W")]
    frame = pd.DataFrame(rows, columns=["day", "CUSTOMER_ID", "TX_FRAUD"])
    frame["TX_DATETIME"] = pd.to_datetime(frame.pop("day")) + pd.Timedelta(hours=12)
    train, test = T.handbook_split(frame, date(2018, 7, 25))
    assert train["CUSTOMER_ID"].tolist() == ["X"]
    by_day = test.groupby(test["TX_DATETIME"].dt.day)["CUSTOMER_ID"].apply(sorted).to_dict()
    assert by_day[8] == ["W", "Y", "Z"]
    assert all(by_day[d] == ["W", "Z"] for d in range(9, 15))


def test_protocol_weeks_and_validation_before_the_first_test_week() -> None:
    ch5 = T.PROTOCOLS["chapter5"]
    test_weeks = [s + timedelta(days=14) for s in ch5.test_starts]
    assert test_weeks == [date(2018, 8, 8), date(2018, 8, 15), date(2018, 8, 22),
                          date(2018, 8, 29)]
    last_validation_day = max(ch5.validation_starts) + timedelta(days=14 + 6)
    # every validation label is known (7 days later) before the first test day
    assert last_validation_day + timedelta(days=7) < test_weeks[0]
    assert T.PROTOCOLS["chapter3"].test_starts == (date(2018, 7, 25),)


def test_search_never_sees_the_test_weeks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "GRID", {"num_leaves": (4, 8)})
    monkeypatch.setattr(T, "ROUNDS", (5, 10))
    frame = _synthetic("2018-06-20", "2018-09-04", per_day=80)
    scrambled = frame.copy()
    in_tests = scrambled["TX_DATETIME"] >= _day("2018-08-08")
    scrambled.loc[in_tests, "TX_FRAUD"] = np.random.default_rng(1).permutation(
        scrambled.loc[in_tests, "TX_FRAUD"].to_numpy())
    spec = T.PROTOCOLS["chapter5"]
    chosen, results = T.search(frame, spec, NAMES)
    assert T.search(scrambled, spec, NAMES) == (chosen, results)
    assert len(results) == 4
    best = max(r["validation"]["average_precision"] for r in results)
    assert next(r for r in results if r["params"] == chosen)["validation"][
        "average_precision"] == best


def test_score_protocol_reports_each_test_week_beside_the_published_table(
        tmp_path: Path) -> None:
    frame = _synthetic("2018-07-25", "2018-09-04")
    report = T.score_protocol(frame, "chapter5", params={"num_boost_round": 20},
                              curves_dir=tmp_path)
    assert [f["test"] for f in report["folds"]] == [
        ["2018-08-08", "2018-08-14"], ["2018-08-15", "2018-08-21"],
        ["2018-08-22", "2018-08-28"], ["2018-08-29", "2018-09-04"]]
    assert report["published"] == T.PUBLISHED["chapter5"]
    for metric in T.METRICS:
        assert report["ours"][metric] == pytest.approx(
            np.mean([f[metric] for f in report["folds"]]))
    assert report["ours"]["auc_roc"] > 0.9  # the planted signal is learned
    for path in map(Path, report["curves"]):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- training ----------------------------------------------------------------------------------


def _real_slice() -> pd.DataFrame:
    if not any((HANDBOOK_DIR / "raw").glob("*.parquet")):
        pytest.skip(f"handbook data not found at {HANDBOOK_DIR} (set RAKSHIT_HANDBOOK_DIR): "
                    "training on a real slice needs its raw/ Parquet")
    raw = dataset.load_handbook(HANDBOOK_DIR, start="2018-04-01", end="2018-04-22",
                                customers=range(0, 4989, 8))
    return F.build_offline(raw)


def test_training_is_reproducible_and_uses_only_its_window() -> None:
    frame = _real_slice()
    params = {"num_boost_round": 30}
    first = T.train_model(frame, "2018-04-08", "2018-04-15", params=params)
    second = T.train_model(frame.sample(frac=1.0, random_state=3), "2018-04-08", "2018-04-15",
                           params=params)
    later = frame[frame["TX_DATETIME"] >= _day("2018-04-15")]
    assert np.array_equal(first.predict(later), second.predict(later))
    assert first.data_hash == T.train_model(frame, "2018-04-08", "2018-04-15",
                                            params=params).data_hash
    in_window = frame[(frame["TX_DATETIME"] >= _day("2018-04-08"))
                      & (frame["TX_DATETIME"] < _day("2018-04-15"))]
    assert first.rows == len(in_window)
    assert first.feature_names == NAMES
    changed = frame.copy()
    changed.loc[changed["TX_DATETIME"] >= _day("2018-04-15"), "TX_FRAUD"] = 0
    assert T.train_model(changed, "2018-04-08", "2018-04-15", params=params).data_hash == \
        first.data_hash  # rows outside the window do not touch the model


def test_training_without_frauds_is_refused() -> None:
    frame = _synthetic("2018-07-25", "2018-07-31", per_day=20)
    frame["TX_FRAUD"] = 0
    with pytest.raises(ValueError, match="no frauds"):
        T.train_model(frame, "2018-07-25", "2018-08-01")


# -- the registry ------------------------------------------------------------------------------


def _trained(frame: pd.DataFrame, cols: list[str] | None = None) -> T.TrainedModel:
    return T.train_model(frame, "2018-07-25", "2018-08-01", feature_cols=cols,
                         params={"num_boost_round": 10})


def _window(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["TX_DATETIME"] >= _day("2018-07-25"))
                 & (frame["TX_DATETIME"] < _day("2018-08-01"))]


def test_registry_round_trip_versions_and_rollback(tmp_path: Path) -> None:
    frame = _synthetic("2018-07-25", "2018-08-03")
    window = _window(frame)
    registry = R.ModelRegistry(tmp_path)
    model = _trained(frame)
    first = registry.register(model, window, metrics={"auc_roc": 0.9})
    same_inputs = registry.register(model, window)
    fewer_inputs = registry.register(_trained(frame, NAMES[:10]), window)
    assert (first, same_inputs, fewer_inputs) == ("1.0.0", "1.0.1", "1.1.0")
    assert registry.register(model, window, bump="major") == "2.0.0"
    assert registry.list_versions() == ["1.0.0", "1.0.1", "1.1.0", "2.0.0"]

    loaded = registry.load(first)
    assert np.array_equal(loaded.predict(frame), model.predict(frame))
    row: dict[str, Any] = frame.iloc[0].to_dict()
    assert loaded.predict_one(row) == pytest.approx(model.predict(frame.iloc[:1])[0])
    meta = loaded.meta
    assert meta["feature_names"] == NAMES
    assert meta["training_window"]["start"].startswith("2018-07-25")
    assert meta["training_data_hash"] == model.data_hash
    assert meta["metrics"] == {"auc_roc": 0.9}
    baseline = meta["feature_baselines"]["TX_AMOUNT"]
    assert len(baseline["proportions"]) == len(baseline["edges"]) + 1
    assert sum(baseline["proportions"]) == pytest.approx(1.0)
    assert sum(meta["score_baseline"]["proportions"]) == pytest.approx(1.0)

    assert registry.champion() is None
    registry.promote(first)
    registry.promote(same_inputs)
    champion = R.ModelRegistry(tmp_path).champion()  # a fresh reader sees the pointer
    assert champion is not None and champion.version == same_inputs
    assert registry.rollback() == first
    assert registry.champion_version() == first
    with pytest.raises(KeyError):
        registry.promote("9.9.9")


def test_champion_challenger_split_is_by_card_and_shadow_never_decides(tmp_path: Path) -> None:
    frame = _synthetic("2018-07-25", "2018-08-03")
    registry = R.ModelRegistry(tmp_path)
    champion = registry.register(_trained(frame), _window(frame))
    challenger = registry.register(_trained(frame), _window(frame))
    registry.promote(champion)
    registry.set_challenger(challenger, share=0.2)
    serving = registry.serving()
    cards = [f"card-{i}" for i in range(5000)]
    arms = [serving.arm(card) for card in cards]
    assert 0.17 < arms.count("challenger") / len(cards) < 0.23
    fresh = R.ModelRegistry(tmp_path).serving()  # another worker makes the same split
    assert arms == [fresh.arm(card) for card in cards]
    decider = serving.decider(cards[arms.index("challenger")])
    assert decider is not None and decider.version == challenger
    assert serving.shadows() == []

    registry.set_shadow(challenger, True)
    shadowed = registry.serving()
    assert {shadowed.arm(card) for card in cards} == {"champion"}
    assert [m.version for m in shadowed.shadows()] == [challenger]

    registry.promote(challenger)  # promoting the challenger ends the experiment
    assert registry.challenger_version() is None


def test_a_tampered_model_file_is_refused(tmp_path: Path) -> None:
    frame = _synthetic("2018-07-25", "2018-08-03")
    registry = R.ModelRegistry(tmp_path)
    version = registry.register(_trained(frame), _window(frame))
    model_file = tmp_path / version / "model.txt"
    model_file.write_text(model_file.read_text().replace("num_leaves", "num_leaves ", 1))
    with pytest.raises(ValueError, match="sha256"):
        registry.load(version)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(5)
    baseline = R.distribution(rng.normal(size=20_000))
    assert R.psi(baseline, rng.normal(size=20_000)) < 0.01
    assert R.psi(baseline, rng.normal(loc=1.0, size=20_000)) > 0.25
    assert R.distribution(np.ones(100)) == {"edges": [1.0], "proportions": [1.0, 0.0]}
