"""What the fraud agents' tests share: a fake clock, a tiny seeded LightGBM booster, transactions at
one fixed instant, and scorers and sanctions lists that fail on demand.

The model is trained here on seeded synthetic data, so no test depends on the registry; time is a
fake clock, so timeouts and cool-downs are exact. The booster, scorer and pool fixtures built from
these live in tests/conftest.py.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import lightgbm as lgb
import numpy as np

from agents.fraud.decision import ThresholdConfig
from agents.fraud.executor import Executor
from agents.fraud.guardrail import SanctionsList, record_amount
from agents.fraud.pipeline import DecisionContext, DecisionPipeline, VerdictParts
from agents.fraud.risk_scorer import BoosterScorer, Scorer
from schemas.clock import to_millis
from scoring.explain import Explanation
from scoring.rules import RuleEngine
from tests.factories import transaction

VEL_1H, VEL_24H = "customer_transaction_velocity_1h", "customer_transaction_velocity_24h"
NAMES = ("amount", VEL_1H, VEL_24H, "merchant_risk")
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = to_millis(WHEN)
MINUTE_MS = 60_000
BASE = ThresholdConfig()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 60.0, n)
    v1 = rng.poisson(1.0, n).astype(float)
    v24 = v1 + rng.poisson(4.0, n)
    risk = rng.random(n)
    logit = 0.012 * (amount - 150) + 0.8 * (v1 - 1) + 3.0 * (risk - 0.6)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return np.column_stack([amount, v1, v24, risk]), y


def train(names: tuple[str, ...] = NAMES, seed: int = 5) -> lgb.Booster:
    x, y = synthetic(3000, seed)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1,
              "seed": seed, "min_data_in_leaf": 10}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=list(names)), num_boost_round=40)


def synthetic_pool() -> list[dict[str, float]]:
    x, _ = synthetic(400, seed=77)
    return [dict(zip(NAMES, map(float, row), strict=True)) for row in x]


def find(scorer: BoosterScorer, pool: list[dict[str, float]], lo: float, hi: float,
         **fixed: float) -> dict[str, float]:
    """A pool row, with ``fixed`` values applied, whose model probability is in [lo, hi)."""
    for row in pool:
        features = {**row, **fixed}
        if lo <= scorer.score(features).probability < hi:
            return features
    raise AssertionError(f"no synthetic row scores in [{lo}, {hi}); adjust the generator")


def tx(i: int = 1, **overrides: Any) -> dict[str, Any]:
    return transaction(i, when=WHEN, **overrides)


def context(**overrides: Any) -> DecisionContext:
    return replace(DecisionContext(now_ms=NOW_MS), **overrides)


def pipeline(scorer: Scorer | None, **kwargs: Any) -> DecisionPipeline:
    """The chain as the worker builds it: the model's time budget in this thread's CPU
    seconds (streams.worker.chain), so a loaded test machine does not time the model out."""
    kwargs.setdefault("make_executor", lambda: Executor(clock=time.thread_time))
    return DecisionPipeline(RuleEngine.from_file(), scorer, **kwargs)


def names(parts: VerdictParts) -> dict[str, bool]:
    return {g.name: g.passed for g in parts.guardrails}


def in_band_history(n: int, currency: str = "EUR", start_ms: int = NOW_MS - 60 * MINUTE_MS
                    ) -> list[tuple[int, str, float, str]]:
    history: list[tuple[int, str, float, str]] = []
    for i in range(n):
        history = record_amount(history, start_ms + i * MINUTE_MS, f"prev-{i}", 9_700.0 + i,
                                currency)
    return history


class Failing:
    """A scorer wrapper that raises (or sleeps on the fake clock) until told to recover."""

    def __init__(self, inner: BoosterScorer, error: Exception | None = None,
                 clock: FakeClock | None = None, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.error = error
        self.clock = clock
        self.delay_s = delay_s
        self.calls = 0

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.inner.feature_names

    def score(self, features: Mapping[str, float], explain: bool = False) -> Any:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.inner.score(features, explain)

    def explain(self, features: Mapping[str, float]) -> Explanation:
        return self.inner.explain(features)


class RaisingSanctions(SanctionsList):
    def __init__(self) -> None:
        super().__init__(["Somebody Fictional"])

    def match(self, name: str) -> Any:
        raise RuntimeError("list unavailable")
