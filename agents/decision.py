"""The decision agent: turns a risk score and the rules that fired into approve / review / decline.

This is the rules-only decision that the foundation ships; it is labelled as such in every verdict
(model version "rules-only-v0", fallback "rules_only") so no consumer mistakes it for a model score.
The fraud-scoring work replaces the score with the LightGBM/online-learner blend and keeps this
contract: the strongest action asked for wins, and the customer message never shows scores or rule
names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scoring.rules import RuleHit

RULES_ONLY_VERSION = "rules-only-v0"

CUSTOMER_MESSAGES = {
    "APPROVE": "Your payment was approved.",
    "REVIEW": "Your payment is being checked. We will let you know shortly.",
    "DECLINE": "Your payment could not be completed. Please contact your card issuer.",
}


@dataclass(frozen=True)
class Decision:
    decision: str  # APPROVE | REVIEW | DECLINE
    score: float
    model_version: str
    rules_fired: Sequence[RuleHit]
    reasons: Sequence[tuple[str, float, float]]  # (feature, value, contribution)
    fallbacks: Sequence[str] = field(default_factory=tuple)

    @property
    def customer_message(self) -> str:
        return CUSTOMER_MESSAGES[self.decision]


def decide_rules_only(features: Mapping[str, float], hits: Sequence[RuleHit]) -> Decision:
    """Strongest action wins; the score is the highest score a fired rule implies (0 when none)."""
    if any(h.action == "decline" for h in hits):
        decision = "DECLINE"
    elif hits:
        decision = "REVIEW"
    else:
        decision = "APPROVE"
    score = max((h.score for h in hits), default=0.0)
    # Without a model there are no contributions; name the features the rules looked at instead.
    reasons = [(name, float(value), 0.0) for name, value in sorted(features.items())]
    return Decision(decision, score, RULES_ONLY_VERSION, tuple(hits), tuple(reasons),
                    fallbacks=("rules_only",))
