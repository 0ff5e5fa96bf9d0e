"""The ARL factors the Analyst's thresholds rely on (agents/routing/calibration.py) hold:
Lorden's bound undershoots the simulated ARL by at least the configured factor, so h = ln(N / A)
keeps the false-alarm budget."""

from __future__ import annotations

import pytest

from agents.routing.analyst import AnalystConfig
from agents.routing.calibration import arl_factor


@pytest.mark.parametrize("index", [0, 1, 2])
def test_configured_factor_is_not_above_the_simulated_one(index: int) -> None:
    config = AnalystConfig()
    p1 = config.design_success[index]
    measured = arl_factor(config.reference_success, p1, h=6.0, runs=3000)
    print(f"\n[calibration] 0.92 -> {p1}: simulated A = {measured:.1f}, "
          f"configured {config.arl_factors[index]}")
    assert config.arl_factors[index] <= measured
    assert config.arl_factors[index] >= 0.5 * measured  # and not needlessly conservative
