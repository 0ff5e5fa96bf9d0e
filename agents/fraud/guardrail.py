"""The guardrail agent: checks that hold whatever the model says, and fail closed.

Every check returns a ``Check`` (name, passed, detail), and every verdict lists every check, passed
or not, so a check that did not run shows up as a missing entry. A failed check also says what it
demands: ``block`` (the payment is declined), ``review`` (an analyst must look), ``exclude_model``
(the model may not be used) or ``record`` (noted for humans, no effect on this payment).

- **card_data**: no card number in anything the verdict carries (``schemas.pan``); one found is
  masked before the verdict leaves, and the check fails so the leak is investigated.
- **aml_sanctions**: merchant / counterparty names against a sanctions list (``sanctions.txt``
  here holds clearly fictitious names), normalised (accents, case, punctuation, legal suffixes such
  as Ltd or GmbH) and fuzzily matched, because listed parties misspell and reorder their names.
  A match **blocks**: a REVIEW would let the payment through while the analyst looks.
- **aml_structuring**: repeated amounts just under a reporting threshold from one card within a
  window (splitting one large payment to stay under the reporting limit). The card's recent
  near-threshold amounts are plain data the caller keeps (like the velocity state) and passes in;
  ``record_amount`` updates it. A hit sends the payment to **review** (the analyst files the
  report); the payment itself is not illegal.
- **protected_attributes**: no configured protected attribute (age, gender, ...) among the model's
  features; matched on whole name tokens, so ``customer_age`` is caught and ``page_views`` is not.
  A model that fails is **excluded** and the rules decide.
- **decline_disparity**: the decline rate of this transaction's segment (country, channel, ...) over
  a window against the rate of all other transactions, with a maximum ratio (against the rest, not
  the overall rate, which the segment itself pulls up). **Recorded only**: a single payment is
  not the place to act on an aggregate, and a segment under a real attack would otherwise have its
  declines turned into approvals; the failed check on every verdict of the segment is the alarm.

If a check itself raises, the outcome is ``block``, with a ``guardrail_error`` check saying so:
a guardrail that cannot run has not passed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from schemas.pan import has_digit_run, redact_text

__all__ = [
    "BLOCK",
    "DEFAULT_SANCTIONS",
    "PASS",
    "PROTECTED_ATTRIBUTES",
    "REVIEW",
    "AmountEntry",
    "Check",
    "DisparityConfig",
    "DisparityMonitor",
    "Guardrail",
    "GuardrailConfig",
    "GuardrailOutcome",
    "SanctionsList",
    "StructuringConfig",
    "check_card_data",
    "normalize_name",
    "protected_in",
    "record_amount",
    "structuring_check",
]

DEFAULT_SANCTIONS = Path(__file__).resolve().parent / "sanctions.txt"
PASS, REVIEW, BLOCK = "pass", "review", "block"
EXCLUDE_MODEL, RECORD = "exclude_model", "record"
_RANK = {PASS: 0, RECORD: 0, EXCLUDE_MODEL: 0, REVIEW: 1, BLOCK: 2}
HOUR_MS = 3_600_000

PROTECTED_ATTRIBUTES = (
    "age", "date_of_birth", "gender", "sex", "race", "ethnicity", "religion", "nationality",
    "marital_status", "disability", "pregnancy", "sexual_orientation", "caste",
)
# Names that match a protected term by token but are not about the person, each with its reason.
# The list is short, reviewed and explicit: a match is excluded unless it is named here.
NOT_PROTECTED = {
    "account_age_days": "the age of the card as the gateways know it, not the cardholder's age",
}


@dataclass(slots=True)
class Check:
    name: str
    passed: bool
    detail: str
    on_fail: str = RECORD  # what a failure demands: block | review | exclude_model | record

    @property
    def action(self) -> str:
        return PASS if self.passed else self.on_fail


@dataclass(slots=True)
class GuardrailOutcome:
    checks: tuple[Check, ...]
    action: str  # pass | review | block
    error: str | None = None

    @classmethod
    def of(cls, checks: Iterable[Check], error: str | None = None) -> GuardrailOutcome:
        items = tuple(checks)
        action, rank = PASS, 0
        for c in items:  # the most demanding failure wins (every verdict passes here)
            if not c.passed and _RANK[c.on_fail] > rank:
                action, rank = c.on_fail, _RANK[c.on_fail]
        return cls(items, action, error)


def failed_closed(exc: BaseException, checks: Iterable[Check] = ()) -> GuardrailOutcome:
    """The outcome when a guardrail raised: block, and say which error."""
    name = type(exc).__name__
    error = Check("guardrail_error", False, f"a guardrail check raised {name}; failing closed",
                  BLOCK)
    return GuardrailOutcome((*checks, error), BLOCK, name)


# -- card data ------------------------------------------------------------------------------------

# Strings already scanned and found free of any digit run. A verdict's strings are mostly the
# same few hundred (check details, messages, rule reasons), so each is scanned once; bounded.
_KNOWN_CLEAN: set[str] = set()
_KNOWN_CLEAN_MAX = 20_000


def check_card_data(texts: Sequence[str]) -> tuple[Check, list[str]]:
    """Scan the verdict's strings for card numbers; return the check and the strings, masked."""
    unseen = [t for t in texts if t not in _KNOWN_CLEAN]
    # One scan for the common case; "\n" joins no run, so a text is clean on its own or not.
    if not unseen or not has_digit_run("\n".join(unseen)):
        if len(_KNOWN_CLEAN) + len(unseen) > _KNOWN_CLEAN_MAX:
            _KNOWN_CLEAN.clear()
        _KNOWN_CLEAN.update(unseen)
        return Check("card_data", True, "no card number in the verdict"), list(texts)
    masked: list[str] = []
    found = 0
    for text in texts:
        clean, count = redact_text(text)
        masked.append(clean)
        found += count
    if found:
        return Check("card_data", False, f"{found} card number(s) found in the verdict and masked",
                     RECORD), masked
    return Check("card_data", True, "no card number in the verdict"), masked


# -- sanctions ------------------------------------------------------------------------------------

_LEGAL_SUFFIXES = frozenset({
    "ltd", "limited", "llc", "inc", "co", "company", "corp", "corporation", "gmbh", "ag", "sa",
    "plc", "bv", "pvt", "llp", "srl", "spa",
})


def normalize_name(name: str) -> str:
    """Lower case, no accents or punctuation, no legal-form words, single spaces."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    tokens = re.split(r"[^0-9a-z]+", plain)
    return " ".join(t for t in tokens if t and t not in _LEGAL_SUFFIXES)


def _similarity(a: str, b: str, floor: float) -> float:
    """Similarity of two normalised names in [0, 1]; 0 when it cannot reach ``floor``."""
    if a == b:
        return 1.0
    ta, tb = a.split(), b.split()
    if len(tb) >= 2 and set(tb) <= set(ta):  # every word of the listed name is in the name
        return 1.0
    direct = SequenceMatcher(None, a, b)
    # Both quick ratios are upper bounds of ratio(), and the reordered strings hold the same
    # characters, so one cheap bound rules out most names before the quadratic comparison.
    if direct.real_quick_ratio() < floor or direct.quick_ratio() < floor:
        return 0.0
    reordered = SequenceMatcher(None, " ".join(sorted(ta)), " ".join(sorted(tb)))
    return max(direct.ratio(), reordered.ratio())


@dataclass(frozen=True)
class SanctionsMatch:
    entry: str
    similarity: float


class SanctionsList:
    """Fuzzy screening of names. Merchant names repeat heavily, so results are memoised per
    normalised name (bounded; the list is fixed for the life of the object)."""

    CACHE_SIZE = 50_000

    def __init__(self, names: Iterable[str], min_similarity: float = 0.88) -> None:
        self.min_similarity = min_similarity
        self.entries = [(name, normalize_name(name)) for name in names if normalize_name(name)]
        if not self.entries:
            raise ValueError("an empty sanctions list screens nothing; refusing to start")
        self._memo: dict[str, SanctionsMatch | None] = {}

    @classmethod
    def from_file(cls, path: Path = DEFAULT_SANCTIONS, min_similarity: float = 0.88
                  ) -> SanctionsList:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return cls([x for x in lines if x and not x.startswith("#")], min_similarity)

    def match(self, name: str) -> SanctionsMatch | None:
        """The best-matching entry at or above the similarity threshold, if any."""
        normalized = normalize_name(name)
        if not normalized:
            return None
        if normalized in self._memo:
            return self._memo[normalized]
        best: SanctionsMatch | None = None
        for entry, entry_norm in self.entries:
            score = _similarity(normalized, entry_norm, self.min_similarity)
            if score >= self.min_similarity and (best is None or score > best.similarity):
                best = SanctionsMatch(entry, score)
        if len(self._memo) >= self.CACHE_SIZE:
            self._memo.clear()
        self._memo[normalized] = best
        return best


# -- structuring ----------------------------------------------------------------------------------

AmountEntry = tuple[int, str, float, str]
"""(event time ms, transaction id, amount, currency): one near-threshold payment of a card."""


def _default_thresholds() -> dict[str, float]:
    # Cash/transaction reporting thresholds (US CTR 10,000 USD; EU AML 10,000 EUR; India CTR
    # 10 lakh INR). Configure per jurisdiction; a currency without one is reported as unscreened.
    return {"USD": 10_000.0, "EUR": 10_000.0, "GBP": 10_000.0, "INR": 1_000_000.0}


@dataclass(frozen=True)
class StructuringConfig:
    thresholds: Mapping[str, float] = field(default_factory=_default_thresholds)
    band: float = 0.10  # "just under" = within 10 % below the threshold
    min_count: int = 3  # this payment included
    window_ms: int = 24 * HOUR_MS
    max_entries: int = 100

    def in_band(self, amount: float, currency: str) -> bool:
        threshold = self.thresholds.get(currency)
        return threshold is not None and threshold * (1.0 - self.band) <= amount < threshold


def record_amount(history: Sequence[Sequence[Any]], event_ms: int, transaction_id: str,
                  amount: float, currency: str,
                  config: StructuringConfig = StructuringConfig()) -> list[AmountEntry]:
    """The card's state with this payment added, once; only near-threshold amounts are kept (the
    others can never count towards structuring), and entries past the window are dropped."""
    entries: list[AmountEntry] = [(int(t), str(i), float(a), str(c)) for t, i, a, c in history]
    if config.in_band(amount, currency) and all(i != transaction_id for _, i, _, _ in entries):
        entries.append((int(event_ms), transaction_id, float(amount), currency))
    if not entries:
        return entries
    newest = max(t for t, _, _, _ in entries)
    kept = sorted(e for e in entries if e[0] > newest - config.window_ms)
    return kept[-config.max_entries:]


def structuring_check(history: Sequence[Sequence[Any]], transaction_id: str, amount: float,
                      currency: str, event_ms: int,
                      config: StructuringConfig = StructuringConfig()) -> Check:
    threshold = config.thresholds.get(currency)
    if threshold is None:
        return Check("aml_structuring", True,
                     f"no reporting threshold configured for {currency}; not screened")
    if not config.in_band(amount, currency):
        return Check("aml_structuring", True, "amount is not just under the reporting threshold")
    earlier = {
        str(i) for t, i, a, c in history
        if str(i) != transaction_id and str(c) == currency
        and event_ms - config.window_ms < int(t) <= event_ms
        and config.in_band(float(a), currency)
    }
    count = len(earlier) + 1
    hours = config.window_ms / HOUR_MS
    detail = (f"{count} payment(s) on this card within {hours:g} h just under the "
              f"{threshold:,.0f} {currency} reporting threshold (limit {config.min_count - 1})")
    return Check("aml_structuring", count < config.min_count, detail, REVIEW)


# -- protected attributes -------------------------------------------------------------------------

def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)  # camelCase -> camel_Case
    return [t for t in re.split(r"[^0-9a-z]+", spaced.lower()) if t]


def protected_in(feature_names: Iterable[str], protected: Iterable[str],
                 allowed: Iterable[str] = ()) -> list[str]:
    """Feature names that contain a protected attribute as whole consecutive tokens (except the
    reviewed names in ``allowed``)."""
    terms = [_tokens(p) for p in protected]
    exempt = set(allowed)
    hits = []
    for name in feature_names:
        if name in exempt:
            continue
        tokens = _tokens(name)
        for term in terms:
            n = len(term)
            if n and any(tokens[i:i + n] == term for i in range(len(tokens) - n + 1)):
                hits.append(name)
                break
    return hits


# -- decline-rate disparity -----------------------------------------------------------------------

@dataclass(frozen=True)
class DisparityConfig:
    dimensions: tuple[str, ...] = ("country", "channel")
    max_ratio: float = 3.0
    window_ms: int = HOUR_MS
    min_count: int = 50  # segments with fewer decisions in the window are not judged
    bucket_ms: int = 60_000


Counts = list[int]  # [decisions, declines]


class DisparityMonitor:
    """Decline counts per segment over a sliding event-time window of one-minute buckets.

    Buckets rather than events: the window's size no longer grows with the traffic (an hour at
    100 tx/s was 360,000 events), so it can be saved with the rest of what a partition has learned
    (``to_state``) at every checkpoint. The window covers the buckets within ``window_ms`` of the
    newest one; a decision older than that is not counted, since it would leave at once.
    """

    def __init__(self, config: DisparityConfig = DisparityConfig()) -> None:
        self.config = config
        self._span = max(1, config.window_ms // config.bucket_ms)
        self._buckets: dict[int, dict[tuple[str, str], Counts]] = {}
        self._bucket_totals: dict[int, Counts] = {}
        self._segments: dict[tuple[str, str], Counts] = {}
        self._total = [0, 0]
        self._newest: int | None = None

    def __len__(self) -> int:
        """Decisions currently in the window."""
        return self._total[0]

    def segments(self, tx: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple([str(tx.get(d) or "UNKNOWN") for d in self.config.dimensions])

    def _add(self, bucket: int, key: tuple[str, str], n: int, declines: int) -> None:
        counts = self._buckets.setdefault(bucket, {}).setdefault(key, [0, 0])
        counts[0] += n
        counts[1] += declines
        window = self._segments.setdefault(key, [0, 0])
        window[0] += n
        window[1] += declines

    def _advance(self, bucket: int) -> None:
        if self._newest is not None and bucket <= self._newest:
            return
        self._newest = bucket
        for old in [b for b in self._bucket_totals if b <= bucket - self._span]:
            total = self._bucket_totals.pop(old)
            self._total[0] -= total[0]
            self._total[1] -= total[1]
            for key, (n, d) in self._buckets.pop(old, {}).items():
                window = self._segments[key]
                window[0] -= n
                window[1] -= d
                if window[0] == 0:
                    del self._segments[key]

    def record(self, event_ms: int, tx: Mapping[str, Any], declined: bool) -> None:
        bucket = int(event_ms) // self.config.bucket_ms
        self._advance(bucket)
        assert self._newest is not None
        if bucket <= self._newest - self._span:
            return  # older than the window
        self._count(bucket, self.segments(tx), 1, int(bool(declined)))

    def _count(self, bucket: int, values: Sequence[str], n: int, declines: int) -> None:
        total = self._bucket_totals.setdefault(bucket, [0, 0])
        total[0] += n
        total[1] += declines
        self._total[0] += n
        self._total[1] += declines
        for key in zip(self.config.dimensions, values, strict=True):
            self._add(bucket, key, n, declines)

    def to_state(self) -> dict[str, Any]:
        """The window as plain data: per bucket, its decisions and declines per segment."""
        return {"newest": self._newest, "buckets": [
            [b, self._bucket_totals[b], [[k[0], k[1], c[0], c[1]] for k, c in seg.items()]]
            for b, seg in sorted(self._buckets.items())]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any],
                   config: DisparityConfig = DisparityConfig()) -> DisparityMonitor:
        monitor = cls(config)
        for bucket, total, segments in state.get("buckets", ()):
            monitor._bucket_totals[int(bucket)] = [int(total[0]), int(total[1])]
            monitor._total[0] += int(total[0])
            monitor._total[1] += int(total[1])
            for dim, value, n, d in segments:
                monitor._add(int(bucket), (str(dim), str(value)), int(n), int(d))
        newest = state.get("newest")
        monitor._newest = None if newest is None else int(newest)
        return monitor

    def check(self, tx: Mapping[str, Any]) -> Check:
        total, declines = self._total
        if declines == 0:
            return Check("decline_disparity", True, "no declines in the window")
        notes: list[str] = []
        worst: list[str] = []
        for dim, value in zip(self.config.dimensions, self.segments(tx), strict=True):
            n, d = self._segments.get((dim, value), [0, 0])
            rest_n, rest_d = total - n, declines - d
            if min(n, rest_n) < self.config.min_count:
                notes.append(f"{dim}={value}: {n} decisions against {rest_n}, too few to judge")
                continue
            if d == 0:
                continue
            ratio = math.inf if rest_d == 0 else (d / n) / (rest_d / rest_n)
            line = f"{dim}={value}: decline rate {ratio:.1f}x that of other transactions"
            (worst if ratio > self.config.max_ratio else notes).append(line)
        if worst:
            return Check("decline_disparity", False,
                         "; ".join(worst) + f" (max {self.config.max_ratio:g}x)", RECORD)
        return Check("decline_disparity", True, "; ".join(notes) or "within the ratio")


# -- the agent ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuardrailConfig:
    sanctions_path: Path = DEFAULT_SANCTIONS
    sanctions_min_similarity: float = 0.88
    screened_fields: tuple[str, ...] = ("merchant_name", "counterparty_name")
    structuring: StructuringConfig = field(default_factory=StructuringConfig)
    protected_attributes: tuple[str, ...] = PROTECTED_ATTRIBUTES
    not_protected: tuple[str, ...] = tuple(NOT_PROTECTED)
    disparity: DisparityConfig = field(default_factory=DisparityConfig)


class Guardrail:
    def __init__(self, config: GuardrailConfig = GuardrailConfig(),
                 sanctions: SanctionsList | None = None) -> None:
        self.config = config
        self.sanctions = sanctions if sanctions is not None else SanctionsList.from_file(
            config.sanctions_path, config.sanctions_min_similarity)
        self.disparity = DisparityMonitor(config.disparity)
        self._model_checks: dict[tuple[str, ...], Check] = {}

    def check_model(self, feature_names: Sequence[str]) -> Check:
        """Protected attributes among a model's features (cached: a model's features are fixed)."""
        key = tuple(feature_names)
        if key not in self._model_checks:
            hits = protected_in(key, self.config.protected_attributes,
                                self.config.not_protected)
            self._model_checks[key] = (
                Check("protected_attributes", False,
                      f"model uses protected attribute(s): {', '.join(hits)}", EXCLUDE_MODEL)
                if hits else
                Check("protected_attributes", True,
                      f"none of {len(key)} model features is a protected attribute"))
        return self._model_checks[key]

    def allowed_features(self, names: Iterable[str]) -> list[str]:
        """Names that are not protected attributes (what the online learner may see)."""
        names = list(names)
        banned = set(protected_in(names, self.config.protected_attributes,
                                  self.config.not_protected))
        return [n for n in names if n not in banned]

    def check_sanctions(self, tx: Mapping[str, Any]) -> Check:
        screened = 0
        for name in self.config.screened_fields:
            value = tx.get(name)
            if not value:
                continue
            screened += 1
            hit = self.sanctions.match(str(value))
            if hit is not None:
                return Check("aml_sanctions", False,
                             f"{name} matches sanctions entry {hit.entry!r} "
                             f"(similarity {hit.similarity:.2f})", BLOCK)
        if not screened:
            return Check("aml_sanctions", True, "no counterparty name to screen")
        return Check("aml_sanctions", True, f"{screened} name(s) screened, no match")

    def screen(self, tx: Mapping[str, Any], amount_history: Sequence[Sequence[Any]],
               event_ms: int, model_features: Sequence[str] | None,
               disparity: DisparityMonitor | None = None) -> GuardrailOutcome:
        """Every pre-decision check. Never raises: an error blocks (see the module docstring).
        ``disparity``: the window to judge against (a partition's own; the agent's by default)."""
        checks: list[Check] = []
        try:
            if model_features is not None:
                checks.append(self.check_model(model_features))
            checks.append(self.check_sanctions(tx))
            checks.append(structuring_check(
                amount_history, str(tx["transaction_id"]), float(tx["amount"]),
                str(tx["currency"]), event_ms, self.config.structuring))
            checks.append((disparity or self.disparity).check(tx))
        except Exception as exc:
            return failed_closed(exc, checks)
        return GuardrailOutcome.of(checks)

    def observe_decision(self, tx: Mapping[str, Any], event_ms: int, decision: str,
                         disparity: DisparityMonitor | None = None) -> None:
        """Feed the disparity window with the decision actually taken."""
        (disparity or self.disparity).record(event_ms, tx, decision == "DECLINE")
