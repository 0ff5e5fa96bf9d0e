"""Exact explanations of a LightGBM score, in the model's raw-margin (log-odds) space.

Why LightGBM's own ``predict(pred_contrib=True)`` and not ``shap.TreeExplainer``: both compute exact
path-dependent TreeSHAP (shap even delegates to this very call for LightGBM boosters), but calling
LightGBM directly keeps shap and its numba start-up out of the worker. The tests still check the
numbers against shap's *own* C++ TreeSHAP over its own parse of the trees, so the two agree
independently, not by construction.

The contributions are in raw-margin space because that is where TreeSHAP is additive: base value +
sum of contributions == the booster's raw margin, exactly (``check_consistency``). The probability
is a sigmoid of that margin and is not additive in the features.

Measured cost (``measure_cost``, LightGBM 4.7, one thread, 20 features, dev machine, microseconds
per row; the registry's real model should be re-measured with the same function):

==============================  ==========  ===========  ==========  ===========
model                           raw, 1 row  TreeSHAP, 1  raw, batch  TreeSHAP,
                                            row          per row     batch/row
==============================  ==========  ===========  ==========  ===========
100 trees x 15 leaves                   19          163         1.9          147
300 trees x 31 leaves                   23        1,384         8.3        1,498
500 trees x 63 leaves                   78        8,059        39.2        5,954
==============================  ==========  ===========  ==========  ===========

TreeSHAP is O(trees x leaves x depth^2) against O(trees x depth) for a prediction, so it costs 7x to
100x a plain prediction and batching does not amortise it (the work is per row, not per call). That
is why the scorer explains lazily: only verdicts that need it (REVIEW, DECLINE) pay for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Contribution = tuple[str, float, float]


def simplified(importance: Mapping[str, float], features: Mapping[str, float]) -> Explanation:
    """A cheap stand-in for TreeSHAP when the explanation time budget is spent: each feature's
    share of the model's global importance (gain), beside this payment's value, largest first.

    It says which features the model leans on overall, not why this payment scored as it did,
    and the shares are not log-odds, so it neither adds up to the margin nor is checked against
    it; the verdict says so (fallback ``explanation_simplified``). Base value 0.
    """
    total = math.fsum(v for v in importance.values() if v > 0.0) or 1.0
    found = [(name, float(features[name]), max(0.0, share) / total)
             for name, share in importance.items() if name in features]
    found.sort(key=lambda c: -c[2])
    return Explanation(tuple(found), 0.0)
"""(feature, value, contribution): the value the model saw and its signed share of the margin."""

DEFAULT_TOLERANCE = 1e-6


@dataclass(slots=True)
class Explanation:
    """Every feature's contribution (largest magnitude first) and the base value they start from."""

    contributions: tuple[Contribution, ...]
    base_value: float

    @property
    def margin(self) -> float:
        """The raw margin the contributions add up to."""
        return self.base_value + math.fsum(c for _, _, c in self.contributions)

    def top(self, k: int) -> tuple[Contribution, ...]:
        return self.contributions[:k]


def contribution_matrix(booster: Any, rows: npt.ArrayLike, num_threads: int = 1) -> np.ndarray:
    """LightGBM's exact TreeSHAP: one row per input, one column per feature, base value last."""
    matrix = np.asarray(booster.predict(np.asarray(rows, dtype=np.float64), pred_contrib=True,
                                        num_threads=num_threads), dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError("only single-output (binary) boosters are supported")
    return matrix


def raw_margin(booster: Any, rows: npt.ArrayLike, num_threads: int = 1) -> np.ndarray:
    """The booster's raw score (log-odds for a binary objective), one per row."""
    return np.asarray(booster.predict(np.asarray(rows, dtype=np.float64), raw_score=True,
                                      num_threads=num_threads), dtype=np.float64)


def _ranked(names: Sequence[str], values: np.ndarray, contribs: np.ndarray) -> tuple[
        Contribution, ...]:
    # Stable sort on -|c| keeps feature order among ties, so the same row always reads the same.
    order = np.argsort(-np.abs(contribs), kind="stable")
    return tuple((names[i], float(values[i]), float(contribs[i])) for i in order)


def explain_rows(booster: Any, rows: npt.ArrayLike, feature_names: Sequence[str],
                 num_threads: int = 1) -> list[Explanation]:
    """Explain a batch; ``rows`` columns are in ``feature_names`` order (NaN = missing)."""
    data = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if data.shape[1] != len(feature_names):
        raise ValueError(f"{data.shape[1]} columns for {len(feature_names)} feature names")
    matrix = contribution_matrix(booster, data, num_threads)
    return [Explanation(_ranked(feature_names, data[i], matrix[i, :-1]), float(matrix[i, -1]))
            for i in range(data.shape[0])]


def explain_row(booster: Any, row: Sequence[float], feature_names: Sequence[str],
                num_threads: int = 1) -> Explanation:
    return explain_rows(booster, [list(row)], feature_names, num_threads)[0]


def top_k(contributions: Sequence[Contribution], k: int) -> tuple[Contribution, ...]:
    """The ``k`` largest contributions by magnitude (input in any order)."""
    return tuple(sorted(contributions, key=lambda c: -abs(c[2]))[:k])


def consistency_gap(contribs: Iterable[float], base: float, margin: float) -> float:
    """|base + sum(contribs) - margin|; infinite when any number is not finite."""
    values = [float(c) for c in contribs]
    if not all(math.isfinite(v) for v in [*values, base, margin]):
        return math.inf
    return abs(base + math.fsum(values) - margin)


def check_consistency(contribs: Iterable[float], base: float, margin: float,
                      tol: float = DEFAULT_TOLERANCE) -> bool:
    """True when the contributions plus the base value reproduce the model's raw margin.

    This is what makes an explanation trustworthy: the margin comes from a plain prediction, the
    contributions from TreeSHAP, two code paths that must agree. A gap means the explanation was
    computed for a different model, row or feature order than the score it claims to explain.
    """
    return consistency_gap(contribs, base, margin) <= tol


@dataclass(frozen=True)
class CostReport:
    """Microseconds per row for a plain raw prediction and for TreeSHAP, single and batched."""

    rows: int
    raw_single_us: float
    contrib_single_us: float
    raw_batch_us: float
    contrib_batch_us: float


def measure_cost(booster: Any, rows: npt.ArrayLike, repeats: int = 50,
                 num_threads: int = 1) -> CostReport:
    """Time prediction and explanation on ``rows`` so the lazy-explanation choice can be re-checked
    on the model actually deployed (the table in this module's docstring came from here)."""
    data = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    single = data[:1]

    def per_call(fn: Any, arg: np.ndarray, n: int) -> float:
        fn(arg)  # warm-up: first call pays lazy initialisation
        start = time.perf_counter()
        for _ in range(n):
            fn(arg)
        return (time.perf_counter() - start) / n * 1e6

    def raw(x: np.ndarray) -> Any:
        return raw_margin(booster, x, num_threads)

    def contrib(x: np.ndarray) -> Any:
        return contribution_matrix(booster, x, num_threads)

    batch_repeats = max(1, repeats // 10)
    return CostReport(
        rows=data.shape[0],
        raw_single_us=per_call(raw, single, repeats),
        contrib_single_us=per_call(contrib, single, repeats),
        raw_batch_us=per_call(raw, data, batch_repeats) / data.shape[0],
        contrib_batch_us=per_call(contrib, data, batch_repeats) / data.shape[0],
    )
