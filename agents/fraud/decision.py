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

from schemas.clock import from_millis
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


# -- the model-era decision ---------------------------------------------------------------------
#
# Thresholds move with the world the decision lives in, always within bounds set by the risk team:
#
# - **Review-queue capacity.** A review nobody has time to work is an approval with extra steps, and
#   a flooded queue delays the cases that matter. From ``queue_high_water`` utilisation the review
#   threshold rises linearly, by at most ``queue_max_raise`` at a full queue. Declines are left
#   alone: queue pressure is no reason to decline more, or less.
# - **Observed false positives.** When analysts find more flagged payments genuine than the target,
#   both thresholds rise in proportion to the excess (``fp_gain``), capped at ``fp_max_raise``.
# - **Conservative tier.** When the planner reports degraded inputs, both thresholds drop by
#   ``conservative_shift``: with less information, more goes to a human.
#
# Low confidence (LightGBM and the online learner disagree strongly, stale features, a missing or
# inconsistent explanation) escalates a would-be approval to review once the score is above a
# floor, and turns a would-be decline into a review unless the risk is high: we decline on
# uncertainty only when even an uncertain score is clearly fraud. Policy rules and guardrails act
# whatever the confidence.
#
# A card an analyst has whitelisted (``Whitelisting``) is trusted over the model, not over policy:
# a REVIEW that only the score or low confidence asked for becomes an APPROVE while the
# whitelisting lasts. A policy rule or guardrail asking for review (structuring is reported by an
# analyst, whoever the cardholder is), any decline, and a would-be decline held back by low
# confidence stand as for any card.

NORMAL_TIER, CONSERVATIVE_TIER = "normal", "conservative"


@dataclass(frozen=True)
class ThresholdConfig:
    review: float = 0.5
    decline: float = 0.9
    review_bounds: tuple[float, float] = (0.25, 0.8)
    decline_bounds: tuple[float, float] = (0.7, 0.98)
    min_gap: float = 0.05  # decline stays at least this far above review
    queue_high_water: float = 0.7
    queue_max_raise: float = 0.2
    target_fp_rate: float = 0.8  # share of flagged payments found genuine that we accept
    fp_gain: float = 0.5
    fp_max_raise: float = 0.1
    conservative_shift: float = 0.15
    disagreement_max: float = 0.4
    low_confidence_floor: float = 0.25
    high_risk: float = 0.97

    def __post_init__(self) -> None:
        lo, hi = self.review_bounds
        dlo, dhi = self.decline_bounds
        if not (0.0 <= lo <= self.review <= hi <= 1.0 and 0.0 <= dlo <= self.decline <= dhi <= 1.0):
            raise ValueError("thresholds must lie within their bounds, within [0, 1]")
        if hi + self.min_gap > dhi:
            raise ValueError("the review upper bound leaves no room for the decline threshold")
        if not 0.0 <= self.queue_high_water < 1.0:
            raise ValueError("queue_high_water must be within [0, 1)")


@dataclass(slots=True)
class Thresholds:
    """The thresholds one decision used; each verdict records them (verdict ``thresholds``), so
    a reader can tell a review the queue's load would have approved from one any day would."""

    review: float
    decline: float
    adjustments: tuple[str, ...]
    tier: str = NORMAL_TIER


def adapt_thresholds(config: ThresholdConfig, tier: str = NORMAL_TIER, queue_depth: int = 0,
                     queue_capacity: int = 0, fp_rate: float | None = None) -> Thresholds:
    """Today's thresholds from the base ones and the conditions above (capacity 0 = unknown)."""
    review, decline = config.review, config.decline
    notes: list[str] = []
    if queue_capacity > 0:
        used = queue_depth / queue_capacity
        if used > config.queue_high_water:
            share = min(1.0, (used - config.queue_high_water) / (1.0 - config.queue_high_water))
            review += config.queue_max_raise * share
            notes.append(f"review queue {used:.0%} full: review threshold raised")
    if fp_rate is not None and fp_rate > config.target_fp_rate:
        step = min(config.fp_max_raise, config.fp_gain * (fp_rate - config.target_fp_rate))
        review += step
        decline += step
        notes.append(f"analysts found {fp_rate:.0%} of flagged payments genuine "
                     f"(target {config.target_fp_rate:.0%}): thresholds raised")
    if tier == CONSERVATIVE_TIER:
        review -= config.conservative_shift
        decline -= config.conservative_shift
        notes.append("conservative tier: thresholds lowered")
    review = min(max(review, config.review_bounds[0]), config.review_bounds[1])
    decline = min(max(decline, config.decline_bounds[0], review + config.min_gap),
                  config.decline_bounds[1])
    return Thresholds(review, decline, tuple(notes), tier)


@dataclass(slots=True)
class Confidence:
    low: bool
    reasons: tuple[str, ...]


def assess_confidence(config: ThresholdConfig, disagreement: float | None = None,
                      features_stale: bool = False, explanation_ok: bool = True) -> Confidence:
    reasons = []
    if disagreement is not None and disagreement > config.disagreement_max:
        reasons.append(f"model and online learner disagree by {disagreement:.2f}")
    if features_stale:
        reasons.append("features are stale")
    if not explanation_ok:
        reasons.append("the score has no consistent explanation")
    return Confidence(bool(reasons), tuple(reasons))


@dataclass(frozen=True, slots=True)
class Whitelisting:
    """An analyst's whitelisting of a card (schemas/whitelist.avsc), times in epoch ms."""

    actor: str
    since_ms: int
    until_ms: int

    def applies(self, event_ms: int) -> bool:
        """In force for a payment made in [since, until): an expired one no longer applies."""
        return self.since_ms <= event_ms < self.until_ms

    def describe(self) -> str:
        until = from_millis(self.until_ms).isoformat(timespec="seconds")
        return f"card whitelisted by {self.actor} until {until}"


@dataclass(slots=True)
class DecisionRecord:
    """What was decided and why, in the order the reasons applied."""

    decision: str  # APPROVE | REVIEW | DECLINE
    score: float
    thresholds: Thresholds
    confidence: Confidence
    why: tuple[str, ...]
    whitelisted: Whitelisting | None = None  # set when the whitelisting turned REVIEW to APPROVE

    @property
    def customer_message(self) -> str:
        return CUSTOMER_MESSAGES[self.decision]


def decide_verdict(score: float, hits: Sequence[RuleHit], thresholds: Thresholds,
                   confidence: Confidence, guardrail_action: str = "pass",
                   config: ThresholdConfig = ThresholdConfig(),
                   whitelist: Whitelisting | None = None) -> DecisionRecord:
    """Guardrails and rules first (policy), then the score against today's thresholds, then
    low-confidence escalation, then the card's whitelisting if it is in force for this payment
    (see the comments above)."""
    record = _decide(score, hits, thresholds, confidence, guardrail_action, config)
    if (whitelist is None or record.decision != "REVIEW" or score >= thresholds.decline
            or guardrail_action == "review" or any(h.action == "review" for h in hits)):
        return record
    return DecisionRecord("APPROVE", score, thresholds, confidence,
                          (f"{whitelist.describe()}: the model's review is waived", *record.why),
                          whitelist)


def _decide(score: float, hits: Sequence[RuleHit], thresholds: Thresholds,
            confidence: Confidence, guardrail_action: str,
            config: ThresholdConfig) -> DecisionRecord:

    def record(decision: str, why: str) -> DecisionRecord:
        return DecisionRecord(decision, score, thresholds, confidence,
                              (why, *confidence.reasons, *thresholds.adjustments))

    if guardrail_action == "block":
        return record("DECLINE", "a guardrail blocked the payment")
    declining = [h.rule_id for h in hits if h.action == "decline"]
    if declining:
        return record("DECLINE", f"policy rule(s) {', '.join(declining)} decline")
    if score >= thresholds.decline:
        if not confidence.low or score >= config.high_risk:
            return record("DECLINE", f"score {score:.3f} at or above decline threshold "
                                     f"{thresholds.decline:.3f}")
        return record("REVIEW", f"score {score:.3f} would decline, but confidence is low and "
                                f"the risk is below {config.high_risk:.2f}")
    if score >= thresholds.review:
        return record("REVIEW", f"score {score:.3f} at or above review threshold "
                                f"{thresholds.review:.3f}")
    reviewing = [h.rule_id for h in hits if h.action == "review"]
    if reviewing:
        return record("REVIEW", f"policy rule(s) {', '.join(reviewing)} ask for review")
    if guardrail_action == "review":
        return record("REVIEW", "a guardrail asks for review")
    if confidence.low and score >= config.low_confidence_floor:
        return record("REVIEW", f"low confidence at score {score:.3f} (floor "
                                f"{config.low_confidence_floor:.2f})")
    return record("APPROVE", f"score {score:.3f} below review threshold {thresholds.review:.3f}")
