"""Drift and live quality: PSI against a training baseline, rolling AUC and AP on labelled feedback.

**PSI** (population stability index) compares how a feature's values fall into fixed bins now with
how they fell in training: ``sum((now - base) * ln(now / base))`` over the bins. Reading it:

- below 0.1 ``stable``: the shift is within what resampling alone produces;
- 0.1 to 0.25 ``watch``: the population moved; look at it, the model may still be fine;
- 0.25 and above ``act``: the model now scores a population it was not trained on; investigate and
  consider retraining or a rollback.

These are the industry's usual cut-offs (credit scoring, where PSI comes from); they are defaults
here, not laws, and ``status`` takes others.

**Baseline** is what the registry stores per feature (and for the score) at training time: the bin
edges and the share of training rows in each bin. Edges are interior cut points, bins are
``(-inf, e0], (e0, e1], ..., (e_last, inf)``, so ``len(proportions) == len(edges) + 1``; missing
values (NaN) get their own share, ``missing``, because a feature that starts going missing is drift
too. All shares sum to 1.

**Rolling AUC and AP** are computed exactly over the last ``window`` labelled scores (bounded
memory, recent behaviour). AP is the step-wise definition scikit-learn uses (sum over thresholds of
precision times the recall gained), so the numbers match offline evaluation.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring import metrics

__all__ = [
    "ACT",
    "SCORE",
    "WATCH",
    "Baseline",
    "FeatureDrift",
    "RollingMetrics",
    "average_precision",
    "drift_report",
    "flag_precision",
    "psi",
    "roc_auc",
    "status",
]

WATCH = 0.1
ACT = 0.25
# An empty bin would make ln(0) or a division by zero; flooring shares at this keeps PSI finite
# while still counting a bin that emptied (or filled from nothing) as a large shift.
_FLOOR = 1e-4


SCORE = "score"  # the name the score's own baseline and drift entry go by


@dataclass(frozen=True)
class Baseline:
    """Training-time distribution of one feature (or of the score); see the module docstring."""

    name: str
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float = 0.0

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(f"{self.name}: {len(self.proportions)} proportions for "
                             f"{len(self.edges)} edges (need one more)")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"{self.name}: edges must be strictly increasing")
        if any(not math.isfinite(e) for e in self.edges):
            raise ValueError(f"{self.name}: edges must be finite")
        shares = [*self.proportions, self.missing]
        if any(p < 0 for p in shares) or abs(math.fsum(shares) - 1.0) > 1e-6:
            raise ValueError(f"{self.name}: proportions and missing must be >= 0 and sum to 1")

    @classmethod
    def from_values(cls, name: str, values: Iterable[float], bins: int = 10) -> Baseline:
        """Quantile bins of a training sample (ties merged, so a count feature gets fewer bins)."""
        data = np.asarray(list(values), dtype=np.float64)
        if data.size == 0:
            raise ValueError(f"{name}: no values to build a baseline from")
        finite = data[np.isfinite(data)]
        if finite.size:
            # Edges are observed values ("lower" quantiles): an interpolated edge between two
            # tied values of a count feature would make a bin nothing can fall into.
            cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="lower")
            # The top value must not be an edge, or the highest bin is always empty.
            edges = tuple(float(e) for e in np.unique(cuts) if e < finite.max())
        else:
            edges = ()
        shares, missing = _shares(data, edges)
        return cls(name, edges, tuple(shares), missing)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "edges": list(self.edges),
                "proportions": list(self.proportions), "missing": self.missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(str(data["name"]), tuple(float(e) for e in data["edges"]),
                   tuple(float(p) for p in data["proportions"]), float(data.get("missing", 0.0)))


def _shares(values: np.ndarray, edges: Sequence[float]) -> tuple[list[float], float]:
    """Share of values per bin ``(e_{i-1}, e_i]`` and the share that is not finite."""
    n = values.size
    finite = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), finite,
                                         side="left"), minlength=len(edges) + 1)
    return [float(c) / n for c in counts], float(n - finite.size) / n


def psi(baseline: Baseline, values: Iterable[float]) -> float:
    """PSI of ``values`` against ``baseline`` (missing values are a bin of their own)."""
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise ValueError(f"{baseline.name}: no values to compare")
    shares, missing = _shares(data, baseline.edges)
    total = 0.0
    for now, base in zip([*shares, missing], [*baseline.proportions, baseline.missing],
                         strict=True):
        if now == 0.0 and base == 0.0:
            continue
        a, e = max(now, _FLOOR), max(base, _FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def status(value: float, watch: float = WATCH, act: float = ACT) -> str:
    if value >= act:
        return "act"
    if value >= watch:
        return "watch"
    return "stable"


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    status: str
    n: int


def drift_report(baselines: Mapping[str, Baseline], samples: Mapping[str, Sequence[float]],
                 watch: float = WATCH, act: float = ACT) -> dict[str, FeatureDrift]:
    """PSI per name that has both a baseline and at least one sampled value."""
    report: dict[str, FeatureDrift] = {}
    for name, baseline in baselines.items():
        values = samples.get(name)
        if not values:
            continue
        value = psi(baseline, values)
        report[name] = FeatureDrift(name, value, status(value, watch, act), len(values))
    return report


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """ROC AUC as scoring.metrics computes it; None when only one class is present (a rolling
    window of labels often has no fraud yet)."""
    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return None
    return metrics.auc_roc(y.astype(np.float64), np.asarray(scores, dtype=np.float64))


def average_precision(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """AP as scoring.metrics computes it; None when there is no positive."""
    y = np.asarray(labels, dtype=bool)
    if not y.any():
        return None
    return metrics.average_precision(y.astype(np.float64), np.asarray(scores, dtype=np.float64))


class RollingMetrics:
    """AUC, AP and the flags' precision over the most recent ``window`` labelled scores.

    Precision here is of the decisions, not of a threshold on the score: among labelled payments
    that were flagged (REVIEW or DECLINE), the share that were fraud. ``to_state`` gives the
    window as plain lists, so it can be saved and merged with other partitions' windows."""

    def __init__(self, window: int = 5_000) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._scores: deque[float] = deque(maxlen=window)
        self._labels: deque[bool] = deque(maxlen=window)
        self._flagged: deque[bool] = deque(maxlen=window)

    def add(self, score: float, label: bool, flagged: bool = False) -> None:
        self._scores.append(float(score))
        self._labels.append(bool(label))
        self._flagged.append(bool(flagged))

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def positives(self) -> int:
        return sum(self._labels)

    def auc(self) -> float | None:
        return roc_auc(list(self._scores), list(self._labels))

    def average_precision(self) -> float | None:
        return average_precision(list(self._scores), list(self._labels))

    def precision(self) -> float | None:
        """Fraud among the flagged labelled payments; None when none was flagged."""
        return flag_precision(self._labels, self._flagged)

    def to_state(self) -> dict[str, list[Any]]:
        return {"scores": list(self._scores), "labels": list(self._labels),
                "flagged": list(self._flagged)}

    def restore(self, state: Mapping[str, Sequence[Any]]) -> None:
        scores, labels = state.get("scores", ()), state.get("labels", ())
        flagged = state.get("flagged") or [False] * len(scores)
        for score, label, flag in zip(scores, labels, flagged, strict=True):
            self.add(float(score), bool(label), bool(flag))


def flag_precision(labels: Iterable[bool], flagged: Iterable[bool]) -> float | None:
    hits = total = 0
    for label, flag in zip(labels, flagged, strict=True):
        if flag:
            total += 1
            hits += bool(label)
    return hits / total if total else None
