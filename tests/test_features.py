"""Feature state and definitions: parity with the handbook's reference columns on slices of the
real data, and the properties the streaming side relies on (idempotent, order-independent,
bounded, JSON) checked with generated event histories."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.clock import to_millis
from scoring import dataset
from scoring import features as F
from streams.config import HANDBOOK_DIR

D = F.DAY_MS
H = F.HOUR_MS


def _ms(text: str) -> int:
    return to_millis(datetime.fromisoformat(text).replace(tzinfo=UTC))


def _handbook() -> Path:
    if not any((HANDBOOK_DIR / "raw").glob("*.parquet")):
        pytest.skip(f"handbook data not found at {HANDBOOK_DIR} (set RAKSHIT_HANDBOOK_DIR): the "
                    "reference-parity tests need its raw/ and transformed/ Parquet")
    return HANDBOOK_DIR


# -- the feature list --------------------------------------------------------------------------


def test_feature_lists_are_fixed_and_label_free() -> None:
    handbook = F.feature_names("handbook")
    gateway = F.feature_names("gateway")
    assert handbook[:15] == list(dataset.REFERENCE_COLUMNS)
    assert handbook == F.feature_names("handbook")  # same order every call
    assert "cross_border_transaction_flag" in gateway
    assert "cross_border_transaction_flag" not in handbook  # the data has no country
    assert "TX_AMOUNT_OVER_220" not in gateway  # the handbook's threshold means nothing there
    for names in (handbook, gateway):
        assert not {"TX_FRAUD", "TX_FRAUD_SCENARIO"} & set(names)
        assert len(names) == len(set(names))
    assert all(spec.definition and set(spec.sources) <= set(F.SOURCES) for spec in F.FEATURES)
    with pytest.raises(ValueError):
        F.feature_names("warehouse")


def test_row_features_supply_every_column_of_both_models() -> None:
    card = F.card_observe(None, "a", _ms("2018-04-01T10:00:00"), 10.0, country="FR")
    terminal = F.terminal_observe_tx(None, "a", _ms("2018-04-01T10:00:00"))
    row = F.row_features(card, terminal, _ms("2018-04-01T10:00:00"), 10.0, country="DE")
    # The merchant and device features come from their own state (scoring.merchant).
    merchant = {f.name for f in F.FEATURES if f.entity == "merchant"}
    assert merchant == {"merchant_fraud_rate_7d", "device_reputation_score"}
    assert (set(F.feature_names("handbook")) | set(F.feature_names("gateway"))) - merchant \
        <= set(row)
    assert row["cross_border_transaction_flag"] == 1.0
    json.dumps(row)  # plain floats, ready for a verdict record


# -- definitions on hand-made histories --------------------------------------------------------


def test_transaction_features_use_utc_weekday_and_hour() -> None:
    sunday_night = F.transaction_features(_ms("2018-04-01T06:59:59"), 221.0)
    monday_morning = F.transaction_features(_ms("2018-04-02T07:00:00"), 220.0)
    assert (sunday_night["TX_DURING_WEEKEND"], sunday_night["TX_DURING_NIGHT"]) == (1.0, 1.0)
    assert (monday_morning["TX_DURING_WEEKEND"], monday_morning["TX_DURING_NIGHT"]) == (0.0, 0.0)
    assert sunday_night["TX_AMOUNT_OVER_220"] == 1.0
    assert monday_morning["TX_AMOUNT_OVER_220"] == 0.0  # above, not at


def test_card_windows_are_right_closed_and_include_the_current_transaction() -> None:
    t = 40 * D
    state = None
    for tx_id, when, amount in [("old", t - 30 * D, 1000.0), ("w30", t - 29 * D, 30.0),
                                ("w7", t - 6 * D, 20.0), ("w1", t - 2 * H, 10.0),
                                ("now", t, 40.0)]:
        state = F.card_observe(state, tx_id, when, amount)
    assert state is not None
    f = F.card_features(state, t)
    assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2  # w1, now
    assert f["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 25.0
    assert f["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 3
    assert f["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 4  # t - 30d exactly is outside (t-30d, t]
    assert f["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 25.0
    assert f["customer_transaction_velocity_1h"] == 1
    assert f["time_since_last_transaction_min"] == 120.0
    amounts = F.card_amount_features(state, t, 40.0)
    assert amounts["CUSTOMER_ID_AMOUNT_RATIO_30DAY_WINDOW"] == 40.0 / 20.0  # others: 30, 20, 10
    assert amounts["CUSTOMER_ID_AMOUNT_RATIO_7DAY_WINDOW"] == 40.0 / 15.0
    assert amounts["CUSTOMER_ID_AMOUNT_TO_MEDIAN_30DAY_WINDOW"] == 40.0 / 25.0
    assert amounts["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY_WINDOW"] == pytest.approx(
        (40 - 20) / (200 / 3) ** 0.5)
    # what the card stage calls: both from one scan, the same values
    assert F.card_window_features(state, t, 40.0) == {**f, **amounts}


def test_first_transaction_has_no_history() -> None:
    state = F.card_observe(None, "only", 5 * D, 12.0)
    amounts = F.card_amount_features(state, 5 * D, 12.0)
    assert amounts["CUSTOMER_ID_AMOUNT_RATIO_30DAY_WINDOW"] == F.NO_HISTORY_RATIO
    assert F.card_features(state, 5 * D)["time_since_last_transaction_min"] == 30 * 24 * 60


def test_terminal_risk_only_sees_transactions_a_week_old() -> None:
    t = 50 * D
    state = None
    events = [("a", t - 7 * D - 12 * H, True), ("b", t - 9 * D, False), ("c", t - 20 * D, True),
              ("recent", t - 2 * D, True)]
    for tx_id, when, fraud in events:
        state = F.terminal_observe_label(state, tx_id, when, fraud)  # label first
        state = F.terminal_observe_tx(state, tx_id, when)
    assert state is not None
    f = F.terminal_features(state, t)
    assert (f["TERMINAL_ID_NB_TX_1DAY_WINDOW"], f["TERMINAL_ID_RISK_1DAY_WINDOW"]) == (1, 1.0)
    assert (f["TERMINAL_ID_NB_TX_7DAY_WINDOW"], f["TERMINAL_ID_RISK_7DAY_WINDOW"]) == (2, 0.5)
    assert f["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 3  # "recent" is not known yet
    assert f["TERMINAL_ID_RISK_30DAY_WINDOW"] == pytest.approx(2 / 3)
    assert f["TERMINAL_ID_FRAUD_RUN_LENGTH"] == 1  # a; b (genuine) breaks the run
    assert f["TERMINAL_ID_DAYS_SINCE_RUN_START"] == 7.5
    assert f["TERMINAL_ID_DAYS_SINCE_RUN_PRECEDING_GENUINE"] == 9.0
    empty = F.terminal_features(F.terminal_observe_tx(None, "x", t), t)
    assert empty["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.0  # risk 0 when the count is 0
    assert empty["TERMINAL_ID_DAYS_SINCE_RUN_START"] == F.NO_RUN_DAYS


def test_home_country_is_the_earliest_transactions_even_when_it_arrives_late() -> None:
    state = F.card_observe(None, "b", 2 * D, 5.0, country="DE")
    assert F.cross_border(state, "FR") == 1.0
    state = F.card_observe(state, "a", 1 * D, 5.0, country="FR")  # earlier, arrives later
    assert F.cross_border(state, "FR") == 0.0
    assert F.cross_border(state, None) == 0.0


def test_account_age_and_home_location_are_the_earliest_transactions() -> None:
    paris, berlin = (48.8566, 2.3522), (52.52, 13.405)
    state = F.card_observe(None, "b", 10 * D, 5.0, geo=berlin)
    assert F.account_age_days(state, 10 * D) == 0.0
    assert F.geo_distance_from_home(state, paris) == pytest.approx(878, abs=5)
    state = F.card_observe(state, "a", 4 * D, 5.0, geo=paris)  # earlier, arrives later
    assert F.account_age_days(state, 10 * D) == 6.0
    assert F.geo_distance_from_home(state, paris) == pytest.approx(0.0, abs=1e-9)
    assert F.geo_distance_from_home(state, None) == 0.0
    far = F.card_observe(None, "x", D, 1.0)  # no location ever: no distance, no guess
    assert F.geo_distance_from_home(far, berlin) == 0.0
    row = F.row_features(state, F.terminal_observe_tx(None, "a", 4 * D), 10 * D, 5.0,
                         geo=berlin)
    assert row["account_age_days"] == 6.0
    assert row["geo_distance_from_home"] == pytest.approx(878, abs=5)


# -- properties --------------------------------------------------------------------------------

# Events within a few weeks, so windows, pruning and the caps all come into play; ids drawn from a
# small alphabet so duplicates (replays) are frequent.
_times = st.integers(0, 45 * D)
_ids = st.sampled_from([f"t{i}" for i in range(40)])
_card_events = st.lists(st.tuples(_ids, _times, st.floats(0, 500, allow_nan=False)),
                        max_size=60)
_terminal_events = st.lists(st.tuples(_ids, _times, st.sampled_from(["tx", "fraud", "genuine"])),
                            max_size=60)


def _distinct_by_id(events: list[Any]) -> list[Any]:
    """One time (and amount) per id: a replayed transaction repeats its own event."""
    first: dict[str, Any] = {}
    for event in events:
        first.setdefault(event[0], event)
    return [first[event[0]] for event in events]


def _card_run(events: list[tuple[str, int, float]]) -> dict[str, Any]:
    state: dict[str, Any] = {"t": [], "id": [], "a": []}
    for tx_id, when, amount in events:
        state = F.card_observe(state, tx_id, when, amount, country=tx_id[-1])
    return state


def _terminal_run(events: list[tuple[str, int, str]]) -> dict[str, Any] | None:
    state = None
    for tx_id, when, kind in events:
        if kind == "tx":
            state = F.terminal_observe_tx(state, tx_id, when)
        else:
            state = F.terminal_observe_label(state, tx_id, when, kind == "fraud")
    return state


@given(_card_events, st.randoms(use_true_random=False))
def test_card_state_depends_on_the_set_of_events_not_their_order(
        events: list[tuple[str, int, float]], rng: random.Random) -> None:
    events = _distinct_by_id(events)
    shuffled = events + events[: len(events) // 2]  # replays too
    rng.shuffle(shuffled)
    once, again = _card_run(events), _card_run(shuffled)
    assert once == again
    assert json.loads(json.dumps(once)) == once
    if events:
        newest = max(when for _, when, _ in events)
        for t in (newest, newest - 3 * H, newest - 2 * D):
            assert F.card_features(once, t) == F.card_features(again, t)


@given(_terminal_events, st.randoms(use_true_random=False))
def test_terminal_state_depends_on_the_set_of_events_not_their_order(
        events: list[tuple[str, int, str]], rng: random.Random) -> None:
    timed: dict[str, int] = {}
    events = [(tx_id, timed.setdefault(tx_id, when), kind) for tx_id, when, kind in events]
    shuffled = events * 2
    rng.shuffle(shuffled)
    once, again = _terminal_run(events), _terminal_run(shuffled)
    assert once == again
    if once is not None and again is not None:
        assert json.loads(json.dumps(once)) == once
        for t in (once["newest"], once["newest"] + 7 * D, once["newest"] + 20 * D):
            assert F.terminal_features(once, t) == F.terminal_features(again, t)


@given(_card_events, _times)
def test_card_features_ignore_entries_after_t(events: list[tuple[str, int, float]],
                                              t: int) -> None:
    events = _distinct_by_id(events)
    state = _card_run(events)
    newest = max((when for _, when, _ in events), default=t)
    t = min(t, newest)
    later = F.card_observe(json.loads(json.dumps(state)), "future", t + 1, 99.0)
    if t > newest - F.LATENESS_MS:  # the future event prunes nothing t's windows can reach
        assert F.card_features(later, t) == F.card_features(state, t)


def test_state_is_bounded_by_the_windows_and_the_caps() -> None:
    card: dict[str, Any] | None = None
    terminal: dict[str, Any] | None = None
    for i in range(5000):  # one transaction every 15 minutes for 52 days
        when = i * 15 * 60_000
        card = F.card_observe(card, f"t{i}", when, 1.0)
        terminal = F.terminal_observe_tx(terminal, f"t{i}", when)
    assert card is not None and terminal is not None
    assert len(card["t"]) == F.MAX_CARD_ENTRIES
    assert len(terminal["t"]) == F.MAX_TERMINAL_ENTRIES
    sparse = None
    for day in range(200):
        sparse = F.card_observe(sparse, f"d{day}", day * D, 1.0)
    assert sparse is not None
    assert len(sparse["t"]) == 31  # only what (newest - 31 days, newest] holds


# -- parity with the handbook's reference columns -----------------------------------------------


def _slice_parity(data_dir: Path, columns: list[str], **selection: Any) -> dict[str, float]:
    raw = dataset.load_handbook(data_dir, "raw", start="2018-04-01", end="2018-05-20",
                                **selection)
    ours = F.build_offline(raw)
    reference = dataset.load_handbook(data_dir, "transformed", start="2018-04-01",
                                      end="2018-05-20", **selection)
    assert len(ours) == len(reference) > 5000
    return dataset.compare_with_reference(ours, reference, columns,
                                          exclude=dataset.same_second_ties(ours))


def test_card_and_transaction_features_match_the_reference_on_a_slice_of_cards() -> None:
    data_dir = _handbook()
    card_columns = [c for c in dataset.REFERENCE_COLUMNS if not c.startswith("TERMINAL_ID")]
    # every transaction of these cards over 7 weeks: their windows are complete and get pruned
    errors = _slice_parity(data_dir, card_columns, customers=range(0, 4989, 40))
    assert max(errors.values()) <= 1e-9, errors


def test_terminal_features_match_the_reference_on_a_slice_of_terminals() -> None:
    data_dir = _handbook()
    terminal_columns = [c for c in dataset.REFERENCE_COLUMNS if c.startswith("TERMINAL_ID")]
    errors = _slice_parity(data_dir, terminal_columns, terminals=range(0, 10000, 60))
    assert max(errors.values()) <= 1e-9, errors


def test_compare_with_reference_reports_a_wrong_value() -> None:
    ours = pd.DataFrame({"TRANSACTION_ID": [1, 2], "X": [1.0, 2.0]})
    reference = pd.DataFrame({"TRANSACTION_ID": [2, 1], "X": [2.0, 1.5]})
    assert dataset.compare_with_reference(ours, reference, ["X"]) == {"X": 0.5 / 1.5}


def test_offline_features_are_cached_by_input_hash(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = _handbook()
    small = tmp_path / "data"
    (small / "raw").mkdir(parents=True)
    dataset.load_handbook(data_dir, "raw", start="2018-04-01", end="2018-04-03").to_parquet(
        small / "raw" / "part.parquet")
    built = dataset.offline_features(small, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 1

    def no_rebuild(raw: pd.DataFrame) -> pd.DataFrame:
        raise AssertionError("a fresh cache must not be rebuilt")

    monkeypatch.setattr(F, "build_offline", no_rebuild)
    pd.testing.assert_frame_equal(dataset.offline_features(small, tmp_path / "cache"), built)


def test_card_decline_rate_counts_only_the_issuers_answers_in_the_week_before() -> None:
    state = None
    for i, (day, result) in enumerate([(1, "APPROVED"), (2, "ISSUER_DECLINE"), (3, "TIMEOUT"),
                                       (4, "SOFT_DECLINE"), (5, "ERROR")]):
        state = F.card_outcome_observe(state, f"t{i}", day * D, result)
    state = F.card_outcome_observe(state, "t1", 2 * D, "ISSUER_DECLINE")  # a repeat: no-op
    assert F.card_decline_rate(state, 6 * D) == pytest.approx(2 / 3)  # days 1, 2, 4 answered
    assert F.card_decline_rate(state, 1 * D) == 0.0  # nothing strictly before
    state = F.card_outcome_observe(state, "t9", 9 * D, "APPROVED")
    assert F.card_decline_rate(state, 9 * D) == pytest.approx(1.0)  # (2d, 9d): day 4, declined
    assert F.card_decline_rate(None, 5 * D) == 0.0
