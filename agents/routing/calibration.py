"""How conservative Lorden's bound is for the Analyst's CUSUMs, measured.

Lorden gives E0[T] >= e**h for a CUSUM of log-likelihood ratios, so h = ln(N) is safe for a
target ARL of N attempts. The true ARL is a constant factor A larger (the statistic overshoots
the threshold and restarts at zero), with A depending on the step sizes, i.e. on (p0, p1). A
threshold h = ln(N / A) keeps the same false-alarm rate and detects ln(A) / KL(p1 || p0) attempts
sooner. `python -m agents.routing.calibration` measures A by simulation;
AnalystConfig.arl_factors holds the figures it printed (rounded down, so the correction errs on the
side of fewer alarms).
"""

from __future__ import annotations

import math

import numpy as np


def simulated_arl(p0_fail: float, p1_fail: float, h: float, runs: int = 4000,
                  seed: int = 1, max_steps: int = 5_000_000) -> float:
    """Mean attempts to a (false) alarm of the CUSUM tuned to p1, on healthy traffic at p0."""
    rng = np.random.default_rng(seed)
    up, down = math.log(p1_fail / p0_fail), math.log((1 - p1_fail) / (1 - p0_fail))
    s = np.zeros(runs)
    stopped_at = np.zeros(runs)
    alive = np.ones(runs, dtype=bool)
    step = 0
    while alive.any() and step < max_steps:
        step += 1
        s = np.maximum(0.0, s + np.where(rng.random(runs) < p0_fail, up, down))
        hit = alive & (s >= h)
        stopped_at[hit] = step
        alive &= ~hit
    if alive.any():
        raise RuntimeError(f"{int(alive.sum())} runs never alarmed within {max_steps} steps")
    return float(stopped_at.mean())


def arl_factor(p0_success: float, p1_success: float, h: float = 8.0, runs: int = 4000) -> float:
    """A = simulated ARL / e**h for the drop p0 -> p1 (success rates)."""
    return simulated_arl(1 - p0_success, 1 - p1_success, h, runs) / math.exp(h)


def main() -> None:
    print("design drop   h   simulated ARL   A = ARL / e^h   ln A")
    for p1 in (0.80, 0.70, 0.50):
        for h in (7.0, 8.0):
            a = arl_factor(0.92, p1, h)
            print(f"0.92 -> {p1:.2f}  {h:.0f}  {a * math.exp(h):13.0f}  {a:14.1f}  "
                  f"{math.log(a):5.2f}")


if __name__ == "__main__":
    main()
