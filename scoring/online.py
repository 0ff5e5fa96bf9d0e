"""Online learners: small models that learn from every label as it arrives, behind one tiny API.

Why an online learner at all: the LightGBM model is retrained offline on labels that arrive days
later, so between releases it cannot react to a new fraud pattern. A model updated one label at a
time tracks that drift within hours. It is a correction to the batch model, not a replacement, and
``scoring.blend`` only trusts it once it has seen enough labels.

The default is river's ``StandardScaler | LogisticRegression``:

- a probability in [0, 1] that is roughly calibrated, so it can be averaged with LightGBM's;
- constant-step SGD forgets old data at a steady rate, which is the point (tracking drift);
- O(features) per update and a state of a few kilobytes: about 7 microseconds per learn+predict;
- the intercept starts at the logit of a configured fraud prior, so before any label the model
  answers with that prior rather than 0.5 (fraud is rare).

``GaussianNaiveBayes`` is the alternative: nothing to tune, informative after a handful of labels
per class, but overconfident (probabilities near 0 or 1), so it suits a cold start better than
steady state.

Non-finite feature values (missing features arrive as NaN) are dropped before the model sees them:
one NaN would poison the scaler's running mean and variance for good.

State is river's own object graph pickled, wrapped with the model kind, the river version and the
label count. Pickle because river has no other persistence format and its docs recommend pickle;
the wrapper refuses state from another kind or river version (river does not promise pickles
survive upgrades). Only load state this system wrote to its own store: unpickling runs code.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any, ClassVar, Protocol, Self

from river import compose, linear_model, naive_bayes, optim, preprocessing

__all__ = [
    "DEFAULT_PRIOR",
    "ONLINE_MODELS",
    "GaussianNaiveBayes",
    "LogisticLearner",
    "OnlineModel",
    "StateMismatch",
    "make_online",
    "restore_online",
]

DEFAULT_PRIOR = 0.02
_STATE_FORMAT = 1
RIVER_VERSION = version("river")


class StateMismatch(ValueError):
    """Stored state belongs to another model kind, format or river version."""


class OnlineModel(Protocol):
    kind: ClassVar[str]

    @property
    def labels_seen(self) -> int: ...

    def learn_one(self, features: Mapping[str, float], label: bool) -> None: ...

    def predict_one(self, features: Mapping[str, float]) -> float: ...

    def to_state(self) -> bytes: ...


def _finite(features: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in features.items():
        number = float(value)
        if math.isfinite(number):
            out[name] = number
    return out


def _check_prior(prior: float) -> float:
    if not 0.0 < prior < 1.0:
        raise ValueError("prior must be strictly between 0 and 1")
    return prior


def _clip(p: float) -> float:
    return min(1.0, max(0.0, float(p)))


class _RiverLearner:
    """Shared plumbing: label counting, NaN filtering and the versioned state wrapper."""

    kind: ClassVar[str] = ""

    def __init__(self, model: Any, prior: float) -> None:
        self._model = model
        self._prior = prior
        self._labels = 0

    @property
    def labels_seen(self) -> int:
        return self._labels

    def learn_one(self, features: Mapping[str, float], label: bool) -> None:
        self._model.learn_one(_finite(features), bool(label))
        self._labels += 1

    def predict_one(self, features: Mapping[str, float]) -> float:
        if self._labels == 0:
            return self._prior
        proba = self._model.predict_proba_one(_finite(features))
        if True not in proba and False not in proba:
            return self._prior
        return _clip(proba.get(True, 1.0 - proba.get(False, 0.0)))

    def to_state(self) -> bytes:
        return pickle.dumps({
            "format": _STATE_FORMAT, "kind": self.kind, "river": RIVER_VERSION,
            "labels_seen": self._labels, "prior": self._prior, "model": self._model,
        })

    @classmethod
    def from_state(cls, state: bytes) -> Self:
        data = _load(state)
        if data["kind"] != cls.kind:
            raise StateMismatch(f"state holds a {data['kind']!r} model, not {cls.kind!r}")
        learner = cls.__new__(cls)
        _RiverLearner.__init__(learner, data["model"], float(data["prior"]))
        learner._labels = int(data["labels_seen"])
        return learner


def _load(state: bytes) -> dict[str, Any]:
    data = pickle.loads(state)  # our own store only: see the module docstring
    if not isinstance(data, dict) or data.get("format") != _STATE_FORMAT:
        raise StateMismatch("not an online-learner state of a known format")
    if data.get("river") != RIVER_VERSION:
        raise StateMismatch(f"state written by river {data.get('river')}, "
                            f"this process runs river {RIVER_VERSION}")
    return data


class LogisticLearner(_RiverLearner):
    """StandardScaler | LogisticRegression with SGD; the default (see the module docstring)."""

    kind: ClassVar[str] = "logistic"

    def __init__(self, prior: float = DEFAULT_PRIOR, learning_rate: float = 0.05,
                 l2: float = 1e-4) -> None:
        _check_prior(prior)
        model = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2,
                                            intercept_init=math.log(prior / (1.0 - prior))),
        )
        super().__init__(model, prior)


class GaussianNaiveBayes(_RiverLearner):
    """Per-class Gaussian per feature: quick to warm up, overconfident (module docstring)."""

    kind: ClassVar[str] = "gaussian_nb"

    def __init__(self, prior: float = DEFAULT_PRIOR) -> None:
        factory: Any = naive_bayes.GaussianNB  # river leaves it unannotated
        super().__init__(factory(), _check_prior(prior))


ONLINE_MODELS: dict[str, type[LogisticLearner] | type[GaussianNaiveBayes]] = {
    LogisticLearner.kind: LogisticLearner,
    GaussianNaiveBayes.kind: GaussianNaiveBayes,
}


def make_online(kind: str = LogisticLearner.kind, **params: Any) -> OnlineModel:
    try:
        return ONLINE_MODELS[kind](**params)
    except KeyError:
        raise ValueError(f"unknown online model {kind!r}; known: {sorted(ONLINE_MODELS)}") from None


def restore_online(state: bytes) -> OnlineModel:
    """Rebuild whichever online model wrote ``state``."""
    kind = _load(state)["kind"]
    if kind not in ONLINE_MODELS:
        raise StateMismatch(f"unknown online model kind {kind!r}")
    return ONLINE_MODELS[kind].from_state(state)
