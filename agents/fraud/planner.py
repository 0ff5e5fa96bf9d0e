"""The planner agent: decides, before anything is scored, how this transaction will be scored.

It answers four questions from plain facts about the system's health, and records why:

1. **Model or rules only?** Model + rules normally; rules only when no model is loaded for the arm
   (the rules are the policy floor and always run).
2. **Which features?** Live ones normally. When the feature store fails: the cached copy, flagged
   stale, if it is at most ``max_stale_s`` (1 hour) old; velocity a few minutes old still says a
   lot about a card. Older, or no copy at all: whatever features there are, and the conservative
   tier, because the model is now scoring on information it cannot trust.
3. **Which tier?** ``normal``, or ``conservative`` (lower thresholds, so more goes to review) when
   something upstream went wrong: expired or missing features, or an error the caller reports.
4. **Which arm?** A deterministic hash of the card token and the experiment salt puts each card
   in a bucket in [0, 1); the lowest ``challenger_share`` of buckets go to the challenger, the rest
   to the champion. Hashing the card (not the transaction) keeps one customer on one model, so an
   experiment compares customers' experiences, not coin flips; a new salt re-deals the cards.
   The shadow model, when loaded, also scores ``shadow_share`` of cards (its own hash), recorded and
   never acted on. With no experiment configured the arm is ``NONE``, as the verdict schema says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "ARMS",
    "MAX_STALE_S",
    "ExperimentSplit",
    "FeatureHealth",
    "ModelHealth",
    "Plan",
    "Planner",
    "bucket",
]

MAX_STALE_S = 3600.0
ARMS = ("NONE", "CHAMPION", "CHALLENGER", "SHADOW")
NORMAL, CONSERVATIVE = "normal", "conservative"


@dataclass(frozen=True)
class ExperimentSplit:
    challenger_share: float = 0.0
    shadow_share: float = 0.0
    salt: str = "experiment-0"

    def __post_init__(self) -> None:
        if not (0.0 <= self.challenger_share <= 1.0 and 0.0 <= self.shadow_share <= 1.0):
            raise ValueError("shares must be within [0, 1]")

    @property
    def running(self) -> bool:
        return self.challenger_share > 0.0 or self.shadow_share > 0.0


@dataclass(slots=True)
class ModelHealth:
    """Which models are loaded and usable (not rejected by a guardrail)."""

    champion: bool
    challenger: bool = False
    shadow: bool = False


@dataclass(slots=True)
class FeatureHealth:
    live: bool
    cached_age_s: float | None = None  # None: no cached copy


@dataclass(slots=True)
class Plan:
    use_model: bool
    arm: str  # NONE | CHAMPION | CHALLENGER
    shadow: bool
    feature_source: str  # "live" | "cached" | "partial"
    features_stale: bool
    feature_age_s: float | None
    tier: str  # "normal" | "conservative"
    fallbacks: tuple[str, ...]
    why: tuple[str, ...]


def bucket(card_token: str, salt: str) -> float:
    """Deterministic place of a card in [0, 1) for this salt (same on every worker and run)."""
    digest = hashlib.sha256(f"{salt}\x00{card_token}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class Planner:
    def __init__(self, split: ExperimentSplit = ExperimentSplit(),
                 max_stale_s: float = MAX_STALE_S) -> None:
        self.split = split
        self.max_stale_s = max_stale_s

    def plan(self, card_token: str, models: ModelHealth, features: FeatureHealth,
             error: bool = False) -> Plan:
        fallbacks: list[str] = []
        why: list[str] = []
        tier = NORMAL

        # -- arm and model ---------------------------------------------------------------------
        arm = "NONE"
        use_model = models.champion
        if self.split.running:
            wants_challenger = bucket(card_token, self.split.salt) < self.split.challenger_share
            if wants_challenger and models.challenger:
                arm, use_model = "CHALLENGER", True
                why.append("card is in the challenger's share of the split")
            elif wants_challenger:
                fallbacks.append("challenger_unavailable")
                why.append("card is in the challenger's share but no challenger is loaded")
                arm = "CHAMPION" if models.champion else "NONE"
            else:
                arm = "CHAMPION" if models.champion else "NONE"
                why.append("card is in the champion's share of the split")
        if use_model and arm == "NONE":
            arm = "CHAMPION"  # no experiment running: the champion decides for every card
        if not use_model:
            arm = "NONE"
            fallbacks += ["model_unavailable", "rules_only"]
            why.append("no model is available: rules only")
        shadow = (models.shadow and self.split.shadow_share > 0.0
                  and bucket(card_token, self.split.salt + ":shadow") < self.split.shadow_share)

        # -- features --------------------------------------------------------------------------
        age: float | None = None
        stale = False
        if features.live:
            source = "live"
        elif features.cached_age_s is not None and features.cached_age_s <= self.max_stale_s:
            source, stale, age = "cached", True, features.cached_age_s
            fallbacks.append("cached_features")
            why.append(f"feature store failed: cached features {features.cached_age_s:.0f} s old")
        elif features.cached_age_s is not None:
            source, stale, age, tier = "cached", True, features.cached_age_s, CONSERVATIVE
            fallbacks.append("cached_features_expired")
            why.append(f"feature store failed and the cached features are "
                       f"{features.cached_age_s:.0f} s old (limit {self.max_stale_s:.0f} s)")
        else:
            source, stale, tier = "partial", True, CONSERVATIVE
            fallbacks.append("features_unavailable")
            why.append("feature store failed and no cached features exist")

        if error:
            tier = CONSERVATIVE
            fallbacks.append("upstream_error")
            why.append("an upstream step reported an error")
        if tier == CONSERVATIVE:
            fallbacks.append("conservative_tier")
        return Plan(use_model, arm, shadow, source, stale, age, tier, tuple(fallbacks), tuple(why))
