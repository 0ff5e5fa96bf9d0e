"""How the risk score is put together from LightGBM, the online learner and the policy rules.

    online_weight = 0                                          below min_labels labels seen
                  = max_weight * min(1, (n - min_labels) / (full_labels - min_labels))   otherwise
    model_part    = (1 - online_weight) * p_lightgbm + online_weight * p_online
    score         = max(rule_floor, model_part)        rule_floor = highest score of a fired rule

Why this shape:

- **Rules set a floor, never a ceiling.** A rule is policy a risk team wrote down ("20+ attempts an
  hour is card testing"); a model that has not seen the pattern must not dilute it. Taking the max
  keeps every fired rule's score intact, and the model can only add risk on top.
- **The online learner earns its weight.** Fresh, it is noise; its weight grows linearly with the
  labels it has seen and stops at a cap. The cap (0.3 by default) is there because it is a linear
  model correcting a gradient-boosted one: good at tracking drift, worse at ranking.
- **Without LightGBM, the score is the rule floor.** The online learner is not validated as a
  stand-alone scorer, so the rules-only path stays exactly what it has always been.
- **Deterministic and auditable:** a pure function of its inputs that returns every component, so a
  verdict can say how much each part weighed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Blend", "BlendConfig", "blend", "online_weight"]


@dataclass(frozen=True)
class BlendConfig:
    max_online_weight: float = 0.3
    min_labels: int = 200
    full_labels: int = 5_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_online_weight <= 1.0:
            raise ValueError("max_online_weight must be within [0, 1]")
        if not 0 <= self.min_labels < self.full_labels:
            raise ValueError("need 0 <= min_labels < full_labels")


@dataclass(slots=True)
class Blend:
    score: float
    model_probability: float | None
    online_probability: float | None
    online_weight: float
    rule_floor: float
    source: str  # "rules" | "model" | "model+online"

    @property
    def disagreement(self) -> float | None:
        """|LightGBM - online learner| when both had a say; a low-confidence signal."""
        if self.model_probability is None or self.online_probability is None \
                or self.online_weight == 0.0:
            return None
        return abs(self.model_probability - self.online_probability)


def online_weight(labels_seen: int, config: BlendConfig = BlendConfig()) -> float:
    if labels_seen < config.min_labels:
        return 0.0
    ramp = (labels_seen - config.min_labels) / (config.full_labels - config.min_labels)
    return config.max_online_weight * min(1.0, ramp)


def _probability(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def blend(model_probability: float | None, online_probability: float | None, labels_seen: int,
          rule_scores: Iterable[float], config: BlendConfig = BlendConfig()) -> Blend:
    """Combine the parts as the module docstring says; ``None`` means that part is unavailable."""
    model_p = _probability("model_probability", model_probability)
    online_p = _probability("online_probability", online_probability)
    floor = max((float(s) for s in rule_scores), default=0.0)
    if model_p is None:
        return Blend(floor, None, online_p, 0.0, floor, "rules")
    weight = online_weight(labels_seen, config) if online_p is not None else 0.0
    part = model_p if online_p is None else (1.0 - weight) * model_p + weight * online_p
    source = "model+online" if weight > 0.0 else "model"
    return Blend(max(floor, part), model_p, online_p, weight, floor, source)
