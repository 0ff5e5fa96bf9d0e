"""The rule engine: readable policy rules over named features.

Rules live in a TOML file rather than code so that risk teams can read and change them, and every
verdict names the rules that fired by id. The engine is deliberately tiny: one condition per rule;
combinations are expressed as separate rules, which keeps every hit explainable on its own.
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RULES = Path(__file__).resolve().parent / "policy_rules.toml"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}
ACTIONS = ("review", "decline")


@dataclass(frozen=True)
class Rule:
    id: str
    feature: str
    op: str
    threshold: float
    action: str
    score: float
    reason: str

    def fires(self, features: Mapping[str, float]) -> bool:
        value = features.get(self.feature)
        return value is not None and _OPS[self.op](value, self.threshold)


@dataclass(slots=True)
class RuleHit:
    rule_id: str
    reason: str
    action: str
    score: float


class RuleEngine:
    def __init__(self, rules: list[Rule]) -> None:
        ids = [r.id for r in rules]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate rule ids in {ids}")
        self.rules = rules

    @classmethod
    def from_file(cls, path: Path = DEFAULT_RULES) -> RuleEngine:
        data = tomllib.loads(path.read_text())
        rules = []
        for raw in data.get("rule", []):
            rule = Rule(id=str(raw["id"]), feature=str(raw["feature"]), op=str(raw["op"]),
                        threshold=float(raw["threshold"]), action=str(raw["action"]),
                        score=float(raw["score"]), reason=str(raw["reason"]))
            if rule.op not in _OPS:
                raise ValueError(f"rule {rule.id}: unknown operator {rule.op!r}")
            if rule.action not in ACTIONS:
                raise ValueError(f"rule {rule.id}: action must be one of {ACTIONS}")
            if not 0.0 <= rule.score <= 1.0:
                raise ValueError(f"rule {rule.id}: score must be within [0, 1]")
            rules.append(rule)
        return cls(rules)

    def evaluate(self, features: Mapping[str, float]) -> list[RuleHit]:
        return [RuleHit(r.id, r.reason, r.action, r.score) for r in self.rules if r.fires(features)]
