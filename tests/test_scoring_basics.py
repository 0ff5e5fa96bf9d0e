"""Velocity state and the rule engine: the two pieces of decision logic the foundation ships."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring import velocity
from scoring.rules import RuleEngine

H = velocity.HOUR_MS


def test_windows_count_only_the_past() -> None:
    hist: list[velocity.Entry] = []
    for i, ts in enumerate([0, 10 * 60_000, 2 * H, 3 * H]):
        hist = velocity.record(hist, ts, f"t{i}")
    assert velocity.counts(hist, 3 * H) == {"1h": 1, "24h": 4}
    assert velocity.counts(hist, 2 * H) == {"1h": 1, "24h": 3}
    hist = velocity.record(hist, 26 * H, "late")
    assert velocity.counts(hist, 26 * H) == {"1h": 1, "24h": 2}  # only 3 h and 26 h are in


@given(st.lists(st.tuples(st.integers(0, 48 * H), st.text(min_size=1, max_size=4)),
                max_size=60))
def test_replaying_a_transaction_never_changes_the_state(events: list[tuple[int, str]]) -> None:
    once: list[velocity.Entry] = []
    twice: list[velocity.Entry] = []
    for ts, tid in events:
        once = velocity.record(once, ts, tid)
        twice = velocity.record(velocity.record(twice, ts, tid), ts, tid)
    assert once == twice


def test_state_is_bounded() -> None:
    hist: list[velocity.Entry] = []
    for i in range(velocity.MAX_ENTRIES + 50):
        hist = velocity.record(hist, i, f"t{i}")
    assert len(hist) == velocity.MAX_ENTRIES


def test_rules_fire_on_their_feature() -> None:
    engine = RuleEngine.from_file()
    hits = engine.evaluate({"card_velocity_1h": 25, "card_velocity_24h": 25, "amount": 10})
    assert {h.rule_id for h in hits} == {"VEL-1H-REVIEW", "VEL-1H-DECLINE"}
    assert engine.evaluate({"card_velocity_1h": 1, "amount": 10}) == []


def test_bad_rule_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nid="X"\nfeature="a"\nop="~"\nthreshold=1\naction="review"\n'
                   'score=0.5\nreason="r"\n')
    with pytest.raises(ValueError, match="operator"):
        RuleEngine.from_file(bad)
    bad.write_text('[[rule]]\nid="X"\nfeature="a"\nop=">"\nthreshold=1\naction="block"\n'
                   'score=0.5\nreason="r"\n')
    with pytest.raises(ValueError, match="action"):
        RuleEngine.from_file(bad)
