"""The demo's champion is trained on traffic with fraud in it, whatever the demo's scenario.

A demo of a scenario without fraud (normal, the outages) used to train on that scenario's
traffic and crash on a fresh machine: "no frauds (or no rows) to learn from". It now trains on
the same shape of traffic with the fraud scenario's campaigns, and a demo with fraud trains on
its own scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.demo.run import DemoOptions, ensure_champion
from streams.simulator import training
from streams.simulator.scenarios import SCENARIOS


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_champion_learns_from_a_scenario_with_fraud(
        scenario: str, make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def record(registry: Any, **kwargs: Any) -> dict[str, Any]:
        asked.append(kwargs["scenario"])
        return {"version": "1.0.0", "runs": 4, "transactions": 100, "seconds": 0.1,
                "held_out_ap": 0.5}

    monkeypatch.setattr(training, "train_for_demo", record)
    settings = make_settings(models_dir=tmp_path / "models")
    ensure_champion(settings, DemoOptions(duration_s=30, rate=20, scenario=scenario))
    assert len(asked) == 1
    assert SCENARIOS[asked[0]].fraud is not None
    if SCENARIOS[scenario].fraud is not None:
        assert asked == [scenario]


def test_a_demo_without_fraud_trains_a_real_model_on_fraud_traffic(tmp_path: Path) -> None:
    """The frame the outage demo's champion learns from has frauds (the crash's cause)."""
    frame = training.demo_frame(1, 1, customers=2000, event_rate=2.0, span_s=3 * 3600,
                                scenario="fraud")
    outage = training.demo_frame(1, 1, customers=2000, event_rate=2.0, span_s=3 * 3600,
                                 scenario="issuer-outage")
    assert int(frame["TX_FRAUD"].sum()) > 0
    assert int(outage["TX_FRAUD"].sum()) == 0
