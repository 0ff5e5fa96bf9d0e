"""The evaluator agent: is this score explained, is the model still scoring the population it was
trained on, and is it still right?

- **Per verdict**: an explanation is required for every REVIEW and DECLINE the model scored; it must
  be present and consistent (contributions + base value == the raw margin the score came from,
  ``scoring.explain.check_consistency``). A missing or inconsistent explanation makes the decision
  low-confidence, so an unexplainable score never declines on its own
  (see ``agents.fraud.decision``).
- **Periodically**: recent scores and feature values are kept in bounded samples, and every
  ``drift_every`` observations PSI is computed against the registry's baselines
  (``scoring.drift``). Periodic, not per verdict, because PSI needs a population; by default once
  per sample size, so each report reads a sample no earlier report has seen and the cost (one
  binning per feature over the sample) is paid once per 5,000 verdicts.
- **Drift without the registry's baselines**: when the model came without them (a rules-only
  worker, an old registration) or PSI against them raises (a corrupt baseline), drift is measured
  against a historical baseline instead: the sample of the first report this evaluator made
  (``Baseline.from_values`` per column), so a population that moves while the worker runs still
  shows. ``drift_source`` says which baseline the latest report used (``registry``,
  ``historical``, or ``none`` until a historical one exists) and ``drift_fallbacks`` counts the
  reports that fell back; the worker publishes both as metrics. Drift never fails a verdict.
- **From labels**: rolling AUC and AP over the last ``metrics_window`` labelled scores, and the
  false-positive rate analysts report on flagged payments: the share of REVIEW/DECLINE found
  genuine (strictly 1 - precision of the flags; the textbook FP / (FP + TN) would need labels on
  approved payments, which analysts never see). ``agents.fraud.decision`` adapts its thresholds
  to it. The rate is None until ``min_feedback`` outcomes are in: a handful of cases is not a
  rate.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scoring.drift import SCORE, Baseline, FeatureDrift, RollingMetrics, drift_report
from scoring.explain import DEFAULT_TOLERANCE, consistency_gap

__all__ = ["SCORE", "Evaluator", "ExplanationCheck", "LabelMetrics"]

FLAGGED = ("REVIEW", "DECLINE")
log = logging.getLogger(__name__)


@dataclass(slots=True)
class ExplanationCheck:
    required: bool
    present: bool
    consistent: bool | None  # None when there was nothing to check
    gap: float | None
    detail: str

    @property
    def ok(self) -> bool:
        return not self.required or (self.present and bool(self.consistent))


@dataclass(frozen=True)
class LabelMetrics:
    n: int
    positives: int
    auc: float | None
    average_precision: float | None
    precision: float | None = None  # fraud among the flagged labelled payments


class Evaluator:
    def __init__(self, baselines: Mapping[str, Baseline] | None = None, drift_every: int = 5_000,
                 sample_size: int = 5_000, metrics_window: int = 5_000,
                 feedback_window: int = 1_000, min_feedback: int = 50,
                 tolerance: float = DEFAULT_TOLERANCE) -> None:
        self._settings = (drift_every, sample_size, metrics_window, feedback_window, min_feedback,
                          tolerance)
        self.baselines = dict(baselines or {})
        self.drift_every = drift_every
        self.tolerance = tolerance
        self.min_feedback = min_feedback
        # The latest verdicts' (score, features): columns are cut out only when a report is due,
        # so a verdict costs one append, not one per feature.
        self._recent: deque[tuple[float, Mapping[str, float]]] = deque(maxlen=sample_size)
        self._seen = 0
        self.latest_drift: dict[str, FeatureDrift] | None = None
        self.historical: dict[str, Baseline] = {}  # the first report's sample (module docstring)
        self.drift_source = "registry" if self.baselines else "none"
        self.drift_fallbacks = 0
        self._metrics = RollingMetrics(metrics_window)
        self._feedback: deque[bool] = deque(maxlen=feedback_window)  # True = genuine (a FP)
        # Every label and finding ever recorded (the windows above forget), for the metrics.
        self.labels_recorded = 0
        self.feedback_recorded = 0

    def fresh(self) -> Evaluator:
        """An evaluator with these baselines and settings and nothing seen (a new partition's)."""
        return Evaluator(self.baselines, *self._settings)

    # -- per verdict ------------------------------------------------------------------------------

    def check_explanation(self, decision: str, model_used: bool,
                          contributions: Sequence[float] | None, base_value: float | None,
                          margin: float | None) -> ExplanationCheck:
        required = model_used and decision in FLAGGED
        if contributions is None or base_value is None or margin is None:
            detail = ("no explanation for a model-scored " + decision) if required else \
                "no explanation needed" if not model_used else "not explained (approve)"
            return ExplanationCheck(required, False, None, None, detail)
        if not contributions:
            return ExplanationCheck(required, False, None, None, "explanation is empty")
        gap = consistency_gap(contributions, base_value, margin)
        consistent = gap <= self.tolerance
        detail = (f"contributions + base value match the margin (gap {gap:.1e})" if consistent
                  else f"contributions + base value miss the margin by {gap:.3g}")
        return ExplanationCheck(required, True, consistent, gap, detail)

    # -- periodically -----------------------------------------------------------------------------

    def observe(self, score: float, features: Mapping[str, float]
                ) -> dict[str, FeatureDrift] | None:
        """Add one verdict to the samples; returns a fresh drift report when one is due.
        ``features`` is read when a report is due: hand over a mapping nobody changes after."""
        self._recent.append((score, features))
        self._seen += 1
        if self._seen % self.drift_every == 0:
            report = self._drift_or_fallback()
            if report is not None:
                self.latest_drift = report
            return report
        return None

    def _drift_or_fallback(self) -> dict[str, FeatureDrift] | None:
        """PSI against the registry's baselines, else against the historical ones (built from
        this sample the first time they are needed); None while there is nothing to compare."""
        if self.baselines:
            try:
                report = self.drift_now()
            except Exception:
                log.warning("drift against the registry's baselines failed; using the "
                            "historical baseline", exc_info=True)
            else:
                self.drift_source = "registry"
                if not self.historical:
                    self.historical = self._snapshot(self.baselines)
                return report
        if not self.historical:
            self.historical = self._snapshot(self.baselines)
            return None
        self.drift_fallbacks += 1
        self.drift_source = "historical"
        try:
            return self.drift_now(self.historical)
        except Exception:  # the last good report stands
            log.warning("drift against the historical baseline failed", exc_info=True)
            return None

    def _snapshot(self, names: Mapping[str, Baseline]) -> dict[str, Baseline]:
        """Baselines from the current sample, for the registry's names or every feature seen."""
        wanted = list(names) or [SCORE, *sorted({k for _, f in self._recent for k in f})]
        found: dict[str, Baseline] = {}
        for name, column in self._columns(wanted).items():
            try:
                found[name] = Baseline.from_values(name, column)
            except ValueError:  # nothing finite to bin
                continue
        return found

    def drift_now(self, baselines: Mapping[str, Baseline] | None = None
                  ) -> dict[str, FeatureDrift]:
        """PSI of the current sample against ``baselines`` (the registry's by default)."""
        chosen = self.baselines if baselines is None else baselines
        return drift_report(chosen, self._columns(list(chosen)))

    def _columns(self, names: Sequence[str]) -> dict[str, list[float]]:
        nan = float("nan")
        columns: dict[str, list[float]] = {}
        for name in names:
            if name == SCORE:
                columns[name] = [score for score, _ in self._recent]
                continue
            column = [features.get(name, nan) for _, features in self._recent]
            if None in column:  # a feature present without a value counts as missing
                column = [nan if v is None else v for v in column]
            columns[name] = column
        return columns

    # -- from labels ------------------------------------------------------------------------------

    def record_label(self, score: float, is_fraud: bool, flagged: bool = False) -> None:
        """A label for a scored payment; ``flagged``: it was reviewed or declined."""
        self._metrics.add(score, is_fraud, flagged)
        self.labels_recorded += 1

    def metrics(self) -> LabelMetrics:
        return LabelMetrics(len(self._metrics), self._metrics.positives, self._metrics.auc(),
                            self._metrics.average_precision(), self._metrics.precision())

    def record_feedback(self, decision: str, is_fraud: bool) -> None:
        """An analyst's finding on a flagged payment (only REVIEW/DECLINE count)."""
        if decision in FLAGGED:
            self._feedback.append(not is_fraud)
            self.feedback_recorded += 1

    def feedback_counts(self) -> tuple[int, int]:
        """(flagged payments found genuine, findings) in the window."""
        return sum(self._feedback), len(self._feedback)

    @property
    def false_positive_rate(self) -> float | None:
        if len(self._feedback) < self.min_feedback:
            return None
        return sum(self._feedback) / len(self._feedback)

    # -- saved and restored with the partition it learned from ------------------------------------

    def label_state(self) -> dict[str, Any]:
        """The label windows as plain data (small: written at every checkpoint that changed it)."""
        return {"window": self._metrics.to_state(), "feedback": list(self._feedback),
                "labels_recorded": self.labels_recorded,
                "feedback_recorded": self.feedback_recorded}

    def restore_labels(self, state: Mapping[str, Any]) -> None:
        self._metrics.restore(state.get("window", {}))
        self._feedback.extend(bool(x) for x in state.get("feedback", ()))
        self.labels_recorded = int(state.get("labels_recorded", 0))
        self.feedback_recorded = int(state.get("feedback_recorded", 0))

    def drift_state(self) -> dict[str, Any]:
        """The drift sample (as columns; a missing value as null) and the historical baseline:
        large, so the worker writes it less often than the label windows."""
        names = sorted({k for _, f in self._recent for k in f})
        columns = {name: [_json_float(f.get(name)) for _, f in self._recent] for name in names}
        return {"scores": [score for score, _ in self._recent], "columns": columns,
                "seen": self._seen, "drift_source": self.drift_source,
                "drift_fallbacks": self.drift_fallbacks,
                "historical": {n: [list(b.edges), list(b.proportions), b.missing]
                               for n, b in self.historical.items()}}

    def restore_drift(self, state: Mapping[str, Any]) -> None:
        columns: Mapping[str, Sequence[float | None]] = state.get("columns", {})
        nan = float("nan")
        for i, score in enumerate(state.get("scores", ())):
            row = {n: nan if (v := c[i]) is None else float(v) for n, c in columns.items()}
            self._recent.append((float(score), row))
        self._seen = int(state.get("seen", 0))
        self.drift_source = str(state.get("drift_source", self.drift_source))
        self.drift_fallbacks = int(state.get("drift_fallbacks", 0))
        self.historical = {n: Baseline(n, tuple(e), tuple(p), float(m))
                           for n, (e, p, m) in state.get("historical", {}).items()}


def _json_float(value: float | None) -> float | None:
    """JSON has no NaN: a missing value is null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
