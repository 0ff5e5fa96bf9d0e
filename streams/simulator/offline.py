"""Simulator traffic without Kafka: what a run would publish, as lists, for training.

A model is trained on the kind of traffic it will score: ``simulate`` drives the same
``TrafficGenerator`` the producer drives, at a given rate in event time, and keeps the
transactions, their authorization outcomes, the labels that became known within the run (each
at its ``known_at``) and the ground truth. Arrivals are a Poisson process from their own seeded
stream, so a seed names the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from streams.simulator.population import Population
from streams.simulator.scenarios import Scenario
from streams.simulator.traffic import EventClock, TrafficGenerator


@dataclass
class SimulatedRun:
    """What one run published, and the ground truth it was drawn with."""

    transactions: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)  # known within the run
    fraud: dict[str, str | None] = field(default_factory=dict)  # transaction id -> pattern

    def extend(self, other: SimulatedRun) -> None:
        self.transactions += other.transactions
        self.outcomes += other.outcomes
        self.labels += other.labels
        self.fraud.update(other.fraud)


def simulate(population: Population, scenario: Scenario | str, seed: int, start: datetime,
             duration_s: float, rate: float) -> SimulatedRun:
    """``rate`` transactions per event-time second for ``duration_s`` from ``start``."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    generator = TrafficGenerator(population, scenario, seed, EventClock(start, allow_future=True))
    arrivals = random.Random(f"arrivals:{seed}")
    run = SimulatedRun()
    elapsed = arrivals.expovariate(rate)
    while elapsed < duration_s:
        now = start + timedelta(seconds=elapsed)
        run.labels += generator.due_labels(now)
        event = generator.generate(now)
        run.transactions.append(event.transaction)
        run.outcomes.append(event.outcome)
        if event.fraud_scenario is not None:
            run.fraud[event.transaction["transaction_id"]] = event.fraud_scenario
        elapsed += arrivals.expovariate(rate)
    run.labels += generator.due_labels(start + timedelta(seconds=duration_s))
    return run
