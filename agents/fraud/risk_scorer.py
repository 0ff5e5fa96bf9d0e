"""The risk scorer: the model the executor runs, behind one small interface.

The decision chain needs a fraud probability per transaction, the raw margin it came from, and on
request an exact explanation; it should not care which library computed them. ``Scorer`` is that
interface and ``BoosterScorer`` puts a LightGBM binary booster behind it, taking features by name
so a model trained on another column order or feature set still reads the right values.
``score_many`` and ``explain_many`` make one call for a batch where the scorer can.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from scoring.explain import Contribution, Explanation, explain_rows, raw_margin

__all__ = ["BoosterScorer", "ScoreResult", "Scorer", "explain_many", "score_many"]


@dataclass(slots=True)
class ScoreResult:
    probability: float
    margin: float  # raw score (log-odds) from a plain prediction
    contributions: tuple[Contribution, ...]  # every feature, largest |c| first; () = not explained
    base_value: float | None
    model_version: str

    @property
    def explained(self) -> bool:
        return bool(self.contributions) and self.base_value is not None


class Scorer(Protocol):
    @property
    def model_version(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def score(self, features: Mapping[str, float], explain: bool = False) -> ScoreResult: ...

    def explain(self, features: Mapping[str, float]) -> Explanation: ...


_OBJECTIVE = re.compile(r"^objective=(\S+)(.*)$", re.M)


class BoosterScorer:
    """A LightGBM binary booster as a ``Scorer``: features by name, NaN for a missing one."""

    def __init__(self, booster: Any, model_version: str,
                 feature_names: Sequence[str] | None = None, num_threads: int = 1) -> None:
        names = tuple(feature_names if feature_names is not None else booster.feature_name())
        if len(names) != booster.num_feature():
            raise ValueError(f"{len(names)} feature names for a booster with "
                             f"{booster.num_feature()} features")
        header = booster.model_to_string(num_iteration=1)
        found = _OBJECTIVE.search(header)
        objective = found.group(1) if found else ""
        if objective not in ("binary", "cross_entropy", "xentropy"):
            raise ValueError(f"objective {objective!r} does not give a fraud probability")
        sigmoid = re.search(r"sigmoid:(\S+)", found.group(2)) if found else None
        self._sigmoid = float(sigmoid.group(1)) if sigmoid and objective == "binary" else 1.0
        self._booster = booster
        self._names = names
        # A 1-feature itemgetter returns the value, not a 1-tuple: wrap it so rows stay rows.
        getter = operator.itemgetter(*names)
        self._take: Callable[[Mapping[str, float]], tuple[float, ...]] = (
            getter if len(names) > 1 else (lambda r: (getter(r),)))
        self._version = model_version
        self._threads = num_threads
        self._importance: dict[str, float] | None = None

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names

    def row(self, features: Mapping[str, float]) -> np.ndarray:
        return np.array([[float(features.get(n, math.nan)) for n in self._names]],
                        dtype=np.float64)

    def explain(self, features: Mapping[str, float]) -> Explanation:
        return explain_rows(self._booster, self.row(features), self._names, self._threads)[0]

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        names, take = self._names, self._take
        values = []
        for r in rows:
            try:  # every feature present (the usual case): one C call for the row
                values.append(take(r))
            except KeyError:
                values.append(tuple(r.get(n, math.nan) for n in names))
        return np.array(values, dtype=np.float64).reshape(len(rows), len(names))

    def score_many(self, rows: Sequence[Mapping[str, float]], explain: bool = False
                   ) -> list[ScoreResult]:
        """One prediction call for the batch (LightGBM's per-call cost dominates a row)."""
        data = self.matrix(rows)
        margins = raw_margin(self._booster, data, self._threads)
        found = explain_rows(self._booster, data, self._names, self._threads) if explain else None
        out = []
        for i, margin in enumerate(margins.tolist()):
            probability = 1.0 / (1.0 + math.exp(-self._sigmoid * margin))
            if found is None:
                out.append(ScoreResult(probability, margin, (), None, self._version))
            else:
                out.append(ScoreResult(probability, margin, found[i].contributions,
                                       found[i].base_value, self._version))
        return out

    def importance(self) -> dict[str, float]:
        """Total gain per feature: the simplified explanation's weights when the explanation
        budget is spent (computed once; the booster does not change)."""
        if self._importance is None:
            gains = self._booster.feature_importance(importance_type="gain")
            self._importance = {n: float(g) for n, g in zip(self._names, gains, strict=True)}
        return self._importance

    def explain_many(self, rows: Sequence[Mapping[str, float]]) -> list[Explanation]:
        return explain_rows(self._booster, self.matrix(rows), self._names, self._threads)

    def score(self, features: Mapping[str, float], explain: bool = False) -> ScoreResult:
        row = self.row(features)
        margin = float(raw_margin(self._booster, row, self._threads)[0])
        probability = 1.0 / (1.0 + math.exp(-self._sigmoid * margin))
        if not explain:
            return ScoreResult(probability, margin, (), None, self._version)
        found = explain_rows(self._booster, row, self._names, self._threads)[0]
        return ScoreResult(probability, margin, found.contributions, found.base_value,
                           self._version)


def score_many(scorer: Scorer, rows: Sequence[Mapping[str, float]], explain: bool = False
               ) -> list[ScoreResult]:
    """One call for the batch where the scorer can (``BoosterScorer``); per row otherwise."""
    many = getattr(scorer, "score_many", None)
    if many is not None:
        return list(many(rows, explain))
    return [scorer.score(r, explain=explain) for r in rows]


def explain_many(scorer: Scorer, rows: Sequence[Mapping[str, float]]) -> list[Explanation]:
    many = getattr(scorer, "explain_many", None)
    if many is not None:
        return list(many(rows))
    return [scorer.explain(r) for r in rows]
