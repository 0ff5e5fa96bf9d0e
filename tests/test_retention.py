"""State keys expire (scoring.retention, streams.worker.store.Store.expire).

Terminal, merchant and device keys expire losslessly: after retention, a key deleted and a key
kept give the same features for any later event, late ones included. Cards lose only their
profile (account age, home), after 90 days of silence. What a partition learned never expires
here. The store's sweep looks at a bounded number of keys per call, goes on where it stopped,
and leaves tombstones for the changelog.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import features as F
from scoring import merchant as M
from scoring import retention as R
from streams.worker.store import Store

DAY = F.DAY_MS
T0 = 1_700_000_000_000


def _terminal_table(rng: random.Random, n: int) -> tuple[dict[str, Any], int]:
    """A terminal's, its merchant's and a device's state from ``n`` transactions and some fraud
    labels over 20 days; and the newest event time."""
    table: dict[str, Any] = {}
    newest = T0
    for i in range(n):
        t = T0 + rng.randrange(20 * DAY)
        tx = {"transaction_id": f"tx{i}", "card_token": f"c{i % 7}", "merchant_id": "m1",
              "terminal_id": "term-1", "device_id": f"d{i % 3}"}
        table["term-1"] = F.terminal_observe_tx(table.get("term-1"), tx["transaction_id"], t)
        table.update(M.observe_tx(table, tx, t))
        if rng.random() < 0.3:
            known = t + rng.randrange(3 * DAY, 10 * DAY)
            table["term-1"] = F.terminal_observe_label(table["term-1"], tx["transaction_id"], t,
                                                       True)
            table.update(M.observe_label(table, tx, t, known, True))
            newest = max(newest, known)
        newest = max(newest, t)
    return table, newest


def _features(table: dict[str, Any], i: int, t: int, device: str) -> dict[str, float]:
    """Observe one transaction at ``t`` in ``table`` (in place) and read its features."""
    tx = {"transaction_id": f"later{i}", "card_token": "c-new", "merchant_id": "m1",
          "terminal_id": "term-1", "device_id": device}
    table["term-1"] = F.terminal_observe_tx(table.get("term-1"), tx["transaction_id"], t)
    table.update(M.observe_tx(table, tx, t))
    return {**F.terminal_features(table["term-1"], t), **M.features(table, tx, t)}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60),
       after=st.integers(1, 400 * DAY), late=st.integers(0, F.LATENESS_MS))
def test_terminal_merchant_and_device_keys_expire_without_changing_a_feature(
        seed: int, n: int, after: int, late: int) -> None:
    kept, newest = _terminal_table(random.Random(seed), n)
    now = newest + R.TERMINAL_RETENTION_MS + after
    assert all(R.terminal_expired(k, v, now) for k, v in kept.items())
    expired: dict[str, Any] = {}
    # The partition's next events: one as late as lateness allows, then one at ``now``.
    for i, t in enumerate((now - late, now)):
        for device in ("d0", "d-new"):
            assert _features(expired, i, t, device) == _features(kept, i, t, device)


def test_terminal_keys_are_kept_until_their_retention() -> None:
    table, _ = _terminal_table(random.Random(3), 40)
    assert len(table) == 5  # the terminal, its merchant, three devices
    for key, state in table.items():
        until = R.terminal_last_event_ms(state) + R.TERMINAL_RETENTION_MS
        assert not R.terminal_expired(key, state, until)
        assert R.terminal_expired(key, state, until + 1)


def test_a_fraud_known_later_keeps_its_merchant() -> None:
    """A merchant counts a fraud from its known_at: the key lives that long past it."""
    state = M.merchant_observe_tx(None, "tx1", T0)
    state = M.merchant_observe_fraud(state, "tx1", T0, T0 + 9 * DAY)
    assert R.terminal_last_event_ms(state) == T0 + 9 * DAY
    assert not R.terminal_expired("merchant:m1", state, T0 + R.TERMINAL_RETENTION_MS + DAY)


def test_what_a_partition_learned_never_expires_here() -> None:
    far = T0 + 10_000 * DAY
    assert not R.terminal_expired("learned:state", {"newest": T0}, far)
    assert not R.terminal_expired("scored:tx1", [0.5, "APPROVE", 1, []], far)


def _card(events: list[tuple[int, float]]) -> dict[str, Any]:
    state = None
    for i, (t, amount) in enumerate(events):
        state = F.card_observe(state, f"tx{i}", t, amount, "DE", (52.5, 13.4))
    assert state is not None
    return {"features": state, "amounts": []}


def test_a_card_silent_for_its_retention_expires_and_loses_only_its_profile() -> None:
    stored = _card([(T0 + d * DAY, 10.0 + d) for d in range(0, 40, 3)])
    last = R.card_last_event_ms(stored)
    assert last == T0 + 39 * DAY
    assert not R.card_expired("c1", stored, last + R.CARD_RETENTION_MS)
    assert R.card_expired("c1", stored, last + R.CARD_RETENTION_MS + 1)

    # Coming back after that, every window feature is what a new card gets; the profile is not.
    t = last + R.CARD_RETENTION_MS + 1
    kept = copy.deepcopy(stored["features"])
    kept = F.card_observe(kept, "back", t, 99.0, "FR", (48.9, 2.35))
    fresh = F.card_observe(None, "back", t, 99.0, "FR", (48.9, 2.35))
    assert F.card_window_features(kept, t, 99.0) == F.card_window_features(fresh, t, 99.0)
    profile_kept = F.card_profile_features(kept, t, "FR", (48.9, 2.35))
    profile_fresh = F.card_profile_features(fresh, t, "FR", (48.9, 2.35))
    assert profile_fresh == {"cross_border_transaction_flag": 0.0, "account_age_days": 0.0,
                             "geo_distance_from_home": 0.0}
    assert profile_kept["account_age_days"] > 90 and profile_kept["cross_border_transaction_flag"]


def test_a_cards_outcomes_and_amounts_count_as_its_events() -> None:
    outcomes = F.card_outcome_observe(None, "tx9", T0 + 50 * DAY, "DECLINED")
    stored = {**_card([(T0, 5.0)]), "outcomes": outcomes,
              "amounts": [[T0 + 60 * DAY, "tx10", 199.0, "EUR"]]}
    assert R.card_last_event_ms(stored) == T0 + 60 * DAY
    assert R.card_last_event_ms({}) is None
    assert R.card_expired("c1", {}, T0)  # nothing held: nothing to lose


# -- the store's sweep -------------------------------------------------------------------------


def _store(keys_per_partition: int, partitions: int = 3) -> Store:
    store = Store("test", "")
    for p in range(partitions):
        store.adopt(p, {f"k{p}-{i:04d}": {"t": i} for i in range(keys_per_partition)})
    return store


def _older_than(key: str, value: Any, now: int) -> bool:
    return int(value["t"]) < now


def test_the_sweep_looks_at_a_bounded_number_of_keys_and_goes_on_where_it_stopped() -> None:
    store = _store(100)
    looked: list[str] = []

    def expired(key: str, value: Any, now: int) -> bool:
        looked.append(key)
        return _older_than(key, value, now)

    now = {0: 50, 1: 0, 2: 100}
    gone = store.expire(now, expired, budget=70)
    assert len(looked) == 70 and len(gone) == 50  # partition 0's first 70: 50 old
    store.expire(now, expired, budget=70)
    assert len(looked) == 140  # 30 more of partition 0, then 40 of partition 1
    while len(looked) < 300:
        store.expire(now, expired, budget=70)
    assert len(set(looked[:300])) == 300  # each key once in a pass
    assert store.keys() == 150  # partition 0: 50 left, 1: all 100, 2: none
    # Every deletion is a tombstone for the next checkpoint.
    tombstones = [(p, k) for p, k, v in store.changes() if v is None]
    assert len(tombstones) == 150 and {p for p, _ in tombstones} == {0, 2}


def test_a_partition_without_an_event_time_is_passed_over() -> None:
    store = _store(10)
    assert store.expire({}, _older_than, budget=100) == []
    gone = store.expire({1: 5}, _older_than, budget=100)
    assert sorted(k for _, k in gone) == [f"k1-{i:04d}" for i in range(5)]
    assert store.keys() == 25


def test_a_partition_revoked_during_a_pass_is_left_alone() -> None:
    store = _store(100, partitions=2)
    store.expire({0: 1000, 1: 1000}, _older_than, budget=10)  # partition 0 part-swept
    store.drop(0)
    gone = store.expire({0: 1000, 1: 1000}, _older_than, budget=1000)
    assert {p for p, _ in gone} == {1} and store.keys() == 0
