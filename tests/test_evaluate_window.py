"""`rakshit evaluate --train --test [--delay-days]`: the arguments, the data check and the one-fold
protocol, without a broker. What each bad input is answered with, and that a window on the
handbook's own layout splits and reports as the handbook protocol does."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring import features as F
from scoring import train as T
from streams.bench.evaluate import check_window_data, window_from_args
from streams.cli import main

NAMES = F.feature_names("handbook")
D = date.fromisoformat


def _window(train: tuple[str, str], test: tuple[str, str], delay: int | None = None
            ) -> str | T.Window:
    return window_from_args(None, (D(train[0]), D(train[1])), (D(test[0]), D(test[1])), delay)


def _frame(first: str, last: str, per_day: int = 150, seed: int = 0) -> pd.DataFrame:
    """Handbook-shaped rows with one planted signal: frauds have larger amounts."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(first, last, freq="D")
    n = len(days) * per_day
    fraud = (rng.random(n) < 0.04).astype(np.int8)
    frame = pd.DataFrame({name: rng.normal(size=n) for name in NAMES})
    frame["TX_AMOUNT"] += 3.0 * fraud
    frame["TRANSACTION_ID"] = np.arange(n)
    frame["TX_DATETIME"] = np.repeat(days.to_numpy(), per_day) + rng.integers(
        0, 86_400, n).astype("timedelta64[s]")
    frame["CUSTOMER_ID"] = rng.integers(0, 400, n).astype(np.int32)
    frame["TX_FRAUD"] = fraud
    return frame


def _data_dir(tmp_path: Path, frame: pd.DataFrame) -> Path:
    (tmp_path / "data" / "raw").mkdir(parents=True)
    frame[["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TX_FRAUD"]].to_parquet(
        tmp_path / "data" / "raw" / "part.parquet")
    return tmp_path / "data"


# -- arguments ---------------------------------------------------------------------------------


def test_no_window_means_a_protocol_chapter5_by_default() -> None:
    assert window_from_args(None, None, None, None) == "chapter5"
    assert window_from_args("chapter3", None, None, None) == "chapter3"


def test_a_window_is_its_dates_with_the_handbook_delay_by_default() -> None:
    window = _window(("2018-07-25", "2018-07-31"), ("2018-08-08", "2018-08-14"))
    assert window == T.Window(D("2018-07-25"), D("2018-07-31"), D("2018-08-08"),
                              D("2018-08-14"), 7)


@pytest.mark.parametrize(("train", "test", "delay", "option", "words"), [
    (("2018-04-05", "2018-04-01"), ("2018-04-20", "2018-04-21"), None, "--train",
     "START 2018-04-05 is after END 2018-04-01"),
    (("2018-04-01", "2018-04-02"), ("2018-04-21", "2018-04-20"), None, "--test",
     "START 2018-04-21 is after END 2018-04-20"),
    (("2018-04-01", "2018-04-07"), ("2018-04-14", "2018-04-20"), None, "--test",
     "2018-04-15 at the earliest"),
    (("2018-04-01", "2018-04-07"), ("2018-04-09", "2018-04-10"), 2, "--test",
     "2018-04-10 at the earliest"),
    (("2018-04-01", "2018-04-07"), ("2018-04-20", "2018-04-21"), -1, "--delay-days",
     "0 or more"),
])
def test_a_window_that_cannot_be_is_refused_naming_its_option(
        train: tuple[str, str], test: tuple[str, str], delay: int | None, option: str,
        words: str) -> None:
    with pytest.raises(ValueError, match=option) as caught:
        _window(train, test, delay)
    assert str(caught.value).startswith(option) and words in str(caught.value)


def test_the_test_may_start_the_day_the_training_labels_are_known() -> None:
    window = _window(("2018-04-01", "2018-04-07"), ("2018-04-10", "2018-04-10"), 2)
    assert isinstance(window, T.Window) and window.earliest_test_start == D("2018-04-10")
    assert isinstance(_window(("2018-04-01", "2018-04-01"), ("2018-04-02", "2018-04-02"), 0),
                      T.Window)


def test_half_a_window_or_a_window_beside_a_protocol_is_refused() -> None:
    days = (D("2018-04-01"), D("2018-04-02"))
    with pytest.raises(ValueError, match=r"^--test START END is missing"):
        window_from_args(None, days, None, None)
    with pytest.raises(ValueError, match=r"^--train START END is missing"):
        window_from_args(None, None, days, None)
    with pytest.raises(ValueError, match=r"^--protocol chapter3 and --train/--test"):
        window_from_args("chapter3", days, (D("2018-04-10"), D("2018-04-11")), None)
    with pytest.raises(ValueError, match=r"^--delay-days applies to a custom window"):
        window_from_args(None, None, None, 3)


@pytest.mark.parametrize("bad", ["2018-4-1", "20180401", "2018-02-30", "tomorrow"])
def test_the_command_line_refuses_a_date_not_written_yyyy_mm_dd(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--train", bad, "2018-04-02", "--test", "2018-04-10", "2018-04-11"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --train" in err and "YYYY-MM-DD" in err and repr(bad) in err


def test_the_command_line_answers_a_bad_window_before_touching_kafka(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No broker answers here: a check that came after ensure_broker would hang or fail otherwise.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    data = _data_dir(tmp_path, _frame("2018-07-01", "2018-07-10"))
    code = main(["evaluate", "--data", str(data), "--train", "2018-07-01", "2018-07-03",
                 "--test", "2018-07-05", "2018-07-06"])
    assert code == 2
    assert capsys.readouterr().err.startswith("rakshit evaluate: error: --test: starts "
                                              "2018-07-05")
    code = main(["evaluate", "--data", str(data), "--train", "2018-07-01", "2018-07-03",
                 "--test", "2018-07-10", "2018-07-12", "--delay-days", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--test: no transactions on 2018-07-11, 2018-07-12" in err
    assert "2018-07-01..2018-07-10" in err


# -- the window against the data ---------------------------------------------------------------


def test_every_day_of_the_window_must_be_in_the_data(tmp_path: Path) -> None:
    frame = _frame("2018-07-01", "2018-07-20")
    data = _data_dir(tmp_path, frame[frame["TX_DATETIME"].dt.day != 3])
    window = _window(("2018-07-01", "2018-07-04"), ("2018-07-12", "2018-07-13"))
    assert isinstance(window, T.Window)
    with pytest.raises(ValueError, match=r"^--train: no transactions on 2018-07-03 in "):
        check_window_data(window, data)
    with pytest.raises(ValueError, match=r"^--data: no raw/\*\.parquet under"):
        check_window_data(window, tmp_path / "elsewhere")


def test_a_window_needs_frauds_to_learn_from_and_both_classes_to_test_on(
        tmp_path: Path) -> None:
    frame = _frame("2018-07-01", "2018-07-20")
    day = frame["TX_DATETIME"].dt.date
    frame.loc[day <= D("2018-07-02"), "TX_FRAUD"] = 0
    # On test day 07-12 every fraud is on a card whose fraud on 07-04 is known by then.
    on_12, on_4 = day == D("2018-07-12"), day == D("2018-07-04")
    card = sorted(set(frame.loc[on_12, "CUSTOMER_ID"]) & set(frame.loc[on_4, "CUSTOMER_ID"]))[0]
    frame.loc[on_12, "TX_FRAUD"] = 0
    frame.loc[(on_12 | on_4) & (frame["CUSTOMER_ID"] == card), "TX_FRAUD"] = 1
    data = _data_dir(tmp_path, frame)
    no_fraud = _window(("2018-07-01", "2018-07-02"), ("2018-07-10", "2018-07-11"))
    assert isinstance(no_fraud, T.Window)
    with pytest.raises(ValueError, match=r"^--train: no fraud in 2018-07-01..2018-07-02"):
        check_window_data(no_fraud, data)
    known_only = _window(("2018-07-03", "2018-07-04"), ("2018-07-12", "2018-07-12"))
    assert isinstance(known_only, T.Window)
    with pytest.raises(ValueError, match=r"^--test: 2018-07-12..2018-07-12 needs frauds"):
        check_window_data(known_only, data)


def test_the_search_uses_the_window_moved_back_when_the_data_holds_it(tmp_path: Path) -> None:
    data = _data_dir(tmp_path, _frame("2018-07-01", "2018-07-31"))
    window = _window(("2018-07-20", "2018-07-21"), ("2018-07-24", "2018-07-25"), 1)
    assert isinstance(window, T.Window)
    validation = check_window_data(window, data)
    # Its test period ends the day before the last labels known at the window's test start.
    assert validation == T.Window(D("2018-07-17"), D("2018-07-18"), D("2018-07-21"),
                                  D("2018-07-22"), 1)
    assert validation.test_end + timedelta(days=1 + 1) == window.test_start
    early = _window(("2018-07-01", "2018-07-02"), ("2018-07-04", "2018-07-05"), 1)
    assert isinstance(early, T.Window)
    assert check_window_data(early, data) is None


# -- the one-fold protocol ---------------------------------------------------------------------


def test_a_window_on_the_handbook_layout_splits_as_the_handbook_does() -> None:
    frame = _frame("2018-07-20", "2018-08-20", per_day=60, seed=3)
    frame["CUSTOMER_ID"] %= 40  # few cards, so many are known compromised on test days
    window = T.Window(D("2018-07-25"), D("2018-07-31"), D("2018-08-08"), D("2018-08-14"))
    for ours, theirs in zip(T.window_split(frame, window),
                            T.handbook_split(frame, date(2018, 7, 25)), strict=True):
        pd.testing.assert_frame_equal(ours, theirs)
    assert len(T.handbook_split(frame, date(2018, 7, 25))[1]) < 7 * 60  # cards were dropped


def test_a_later_test_start_knows_the_frauds_of_the_days_in_between() -> None:
    rows = [("2018-07-02", "A", 1), ("2018-07-05", "B", 1), ("2018-07-06", "C", 1)]
    rows += [("2018-07-09", card, 0) for card in "ABCD"]
    frame = pd.DataFrame(rows, columns=["day", "CUSTOMER_ID", "TX_FRAUD"])
    frame["TX_DATETIME"] = pd.to_datetime(frame.pop("day")) + pd.Timedelta(hours=12)
    # Train 07-01..07-02, labels known 2 days later: on 07-09 frauds up to 07-06 are known.
    _, test = T.window_split(frame, T.Window(D("2018-07-01"), D("2018-07-02"), D("2018-07-09"),
                                             D("2018-07-09"), 2))
    assert test["CUSTOMER_ID"].tolist() == ["D"]
    _, test = T.window_split(frame, T.Window(D("2018-07-01"), D("2018-07-02"), D("2018-07-09"),
                                             D("2018-07-09"), 3))
    assert sorted(test["CUSTOMER_ID"]) == ["C", "D"]


def test_a_window_reports_what_a_protocol_reports(tmp_path: Path) -> None:
    frame = _frame("2018-07-25", "2018-08-14")
    protocol = T.score_protocol(frame, "chapter3", params={"num_boost_round": 20})
    window = T.Window(D("2018-07-25"), D("2018-07-31"), D("2018-08-08"), D("2018-08-14"))
    report = T.score_window(frame, window, params={"num_boost_round": 20}, curves_dir=tmp_path)
    assert set(report) == set(protocol) | {"window", "curves"}
    # The same fold as chapter 3's, so the same model and the same figures.
    assert report["folds"] == protocol["folds"]
    assert report["ours"] == protocol["ours"]
    assert report["window"] == {"train": ["2018-07-25", "2018-07-31"],
                                "test": ["2018-08-08", "2018-08-14"], "delay_days": 7}
    assert report["published"] == {} and report["target"] is None
    assert [Path(p).name for p in report["curves"]] == [
        "custom-2018-08-08-2018-08-14-roc.png", "custom-2018-08-08-2018-08-14-pr.png"]
    assert "\n".join(T.format_report(report).splitlines()[:3]).count("ours (LightGBM)") == 1


def test_without_a_validation_fold_the_default_choice_serves_and_says_so() -> None:
    frame = _frame("2018-07-01", "2018-07-10")
    window = T.Window(D("2018-07-01"), D("2018-07-03"), D("2018-07-05"), D("2018-07-07"), 1)
    report = T.score_window(frame, window)
    assert report["params"] == T.DEFAULT_CHOICE and report["search"] == []
    assert report["selection"].startswith("DEFAULT_CHOICE")
    assert report["ours"]["auc_roc"] > 0.9  # the planted signal is learned
