"""The rule engine: readable rules over named features, and refusal of malformed rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.rules import RuleEngine


def test_rules_fire_on_their_feature() -> None:
    engine = RuleEngine.from_file()
    hits = engine.evaluate({"customer_transaction_velocity_1h": 25,
                            "customer_transaction_velocity_24h": 25})
    assert {h.rule_id for h in hits} == {"VEL-1H-REVIEW", "VEL-1H-DECLINE"}
    assert engine.evaluate({"customer_transaction_velocity_1h": 1}) == []


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
