"""Models trained on simulator traffic, offline (no Kafka): for the lift the merchant and device
features bring, and for the demo's champion.

Both generate traffic with ``streams.simulator.offline``, compute every gateway feature with
``scoring.gateway_offline`` (the worker's own state functions, in event time) and train with
``scoring.train``'s code; only the shape of the traffic differs:

- ``train_simulated``: N consecutive days at a steady rate, so labels (known 3-10 days later)
  build merchant and device histories; judged on its last week with and without the two
  features (``scoring.gateway_training.lift``);
- ``train_for_demo``: many short runs shaped like the demo's own (its population size, event
  rate and event span, each run from empty state as each demo starts), so the champion's
  training distributions are what the demo's drift panel compares it with.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from scoring import features
from scoring.gateway_offline import build_gateway_offline
from scoring.gateway_training import train_and_register
from scoring.metrics import average_precision
from scoring.registry import ModelRegistry
from scoring.train import DEFAULT_CHOICE, judge, train_model
from streams.simulator.offline import simulate
from streams.simulator.population import build_population
from streams.simulator.scenarios import Scenario

DAY_S = 86_400.0
START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday; any date serves, the seed names the run
DEMO_SOURCE = "simulator-demo"


def simulated_frame(days: int, seed: int, *, tx_per_day: float, customers: int = 2000,
                    merchants: int = 400, scenario: Scenario | str = "fraud") -> pd.DataFrame:
    """``days`` of one simulated world's traffic with every gateway feature, in event time."""
    population = build_population(seed, customers=customers, merchants=merchants)
    run = simulate(population, scenario, seed, START, days * DAY_S, tx_per_day / DAY_S)
    return build_gateway_offline(run.transactions, run.outcomes, run.labels, run.fraud)


def train_simulated(registry: ModelRegistry, *, days: int, seed: int, tx_per_day: float,
                    promote: bool | None = None, scenario: Scenario | str = "fraud"
                    ) -> dict[str, Any]:
    """Simulate, judge with and without the merchant and device features, register."""
    started = time.perf_counter()
    frame = simulated_frame(days, seed, tx_per_day=tx_per_day, scenario=scenario)
    built = time.perf_counter() - started
    result = train_and_register(
        frame, registry, source="simulator", promote=promote,
        notes=f"simulator: {days} days, seed {seed}, {tx_per_day:g} transactions a day")
    return {**result, "days": days, "seed": seed, "transactions": len(frame),
            "frauds": int(frame["TX_FRAUD"].sum()), "traffic_and_features_s": round(built, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def demo_frame(runs: int, seed: int, *, customers: int, event_rate: float,
               span_s: float, scenario: str = "fraud") -> pd.DataFrame:
    """Every gateway feature of ``runs`` demo-shaped runs (column RUN), each a new world from
    empty state, a day and a few hours after the last (so they cover the week's days and the
    day's hours)."""
    frames = []
    for n in range(runs):
        population = build_population(seed + n, customers=customers)
        start = START + timedelta(days=n, hours=(7 * n) % 24)
        run = simulate(population, scenario, seed + n, start, span_s, event_rate)
        frames.append(build_gateway_offline(run.transactions, run.outcomes, run.labels,
                                            run.fraud).assign(RUN=n))
    return pd.concat(frames, ignore_index=True)


def train_for_demo(registry: ModelRegistry, *, customers: int, event_rate: float,
                   span_s: float, scenario: str = "fraud", seed: int = 1,
                   transactions: int = 120_000, promote: bool = True) -> dict[str, Any]:
    """A champion for the demo: trained on demo-shaped runs (about ``transactions`` in all),
    judged on the last quarter of the runs, then trained on all of them and registered."""
    started = time.perf_counter()
    per_run = max(1.0, event_rate * span_s)
    runs = max(4, round(transactions / per_run))
    frame = demo_frame(runs, seed, customers=customers, event_rate=event_rate, span_s=span_s,
                       scenario=scenario)
    cols = features.feature_names("gateway")
    held = max(1, runs // 4)
    held_out = frame["RUN"] >= runs - held
    first, last = frame["TX_DATETIME"].min(), frame["TX_DATETIME"].max() + pd.Timedelta(1, "s")
    cut = frame.loc[held_out, "TX_DATETIME"].min()
    earlier = train_model(frame, first, cut, feature_cols=cols, params=DEFAULT_CHOICE)
    test = frame[held_out]
    scores = earlier.predict(test)
    metrics = {"out_of_time": judge(test, scores),
               "judged_on": f"runs {runs - held}..{runs - 1} of {runs} (held out)"}
    model = train_model(frame, first, last, feature_cols=cols, params=DEFAULT_CHOICE)
    version = registry.register(
        model, frame, metrics=metrics, source=DEMO_SOURCE,
        notes=f"simulator, demo-shaped: {runs} runs of {span_s:g} event-s at {event_rate:g} tx/s, "
              f"{customers} customers, scenario {scenario}, seed {seed}")
    if promote:
        registry.promote(version)
    y = test["TX_FRAUD"].to_numpy(dtype=np.float64)
    return {"version": version, "runs": runs, "transactions": len(frame),
            "frauds": int(frame["TX_FRAUD"].sum()), "held_out_ap": average_precision(y, scores),
            "seconds": round(time.perf_counter() - started, 1)}
