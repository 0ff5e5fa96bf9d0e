"""The Pilot, one guardrail and one step at a time, on a fake event clock and scripted outcomes."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import pytest

from agents.routing.outcomes import Outcome
from agents.routing.pilot import Action, Pilot, PilotConfig, prob_probe_better
from schemas.clock import from_millis
from schemas.codec import make_codec

BASELINE = {"I": {"A": 0.85, "B": 0.15, "C": 0.0}, "J": {"A": 1.0, "B": 0.0, "C": 0.0},
            "K": {"A": 0.5, "B": 0.5, "C": 0.0}, "M": {"A": 0.6, "B": 0.2, "C": 0.2}}
CODEC = make_codec(None)


class JsonStore(MutableMapping[str, Any]):
    """Holds values as JSON text, like a Faust table's changelog: no in-place mutation survives."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def __getitem__(self, key: str) -> Any:
        return json.loads(self.data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = json.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


# Most tests are about other rules: candidates need not prove health first (see the proof tests).
NO_PROOF = PilotConfig(proof_min_obs=0)


def hyp(hid: str = "h1", *, route: str = "A", issuer: str = "I", scope: str = "ROUTE_ISSUER",
        status: str = "OPEN", confidence: float = 0.99, at_ms: int = 0) -> dict[str, Any]:
    return {
        "hypothesis_id": hid, "status": status, "route": route, "issuer_id": issuer,
        "scope": scope, "suspected_cause": "ROUTE_DEGRADED", "confidence": confidence,
        "confidence_meaning": "posterior probability",
        "since": from_millis(at_ms),
        "created_at": from_millis(at_ms),
        "evidence": {"attempts": 30, "successes": 15, "baseline_rate": 0.92, "observed_rate": 0.5,
                     "statistic": 5.0, "threshold": 4.0, "p95_latency_ms": None},
    }


def feed(pilot: Pilot, route: str, issuer: str, pattern: str, start_ms: int,
         step_ms: int = 100) -> tuple[list[Action], int]:
    """One outcome per character: '1' delivered, '0' timed out."""
    actions: list[Action] = []
    t = start_ms
    for ch in pattern:
        result = "APPROVED" if ch == "1" else "TIMEOUT"
        actions += pilot.on_outcome(Outcome(route, issuer, result, 5.0, t))
        t += step_ms
    return actions, t


def steps(actions: list[Action]) -> list[str]:
    return [a.record["step"] for a in actions if a.kind == "experiment"]


def policies(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.record for a in actions if a.kind == "policy"]


def encode_all(actions: list[Action]) -> None:
    for action in actions:
        schema = "experiment" if action.kind == "experiment" else "routing_policy"
        CODEC.encode(schema, action.record, topic="t")


def check_weights(record: Mapping[str, Any]) -> None:
    weights = [w["weight"] for w in record["weights"]]
    assert all(w >= 0 for w in weights)
    assert abs(sum(weights) - 1.0) < 1e-9


def started(pilot: Pilot) -> tuple[list[Action], int]:
    actions = pilot.on_hypothesis(hyp(), 1000)
    assert steps(actions) == ["STARTED"]
    return actions, 1000


def test_refuses_below_min_confidence() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    actions = pilot.on_hypothesis(hyp(confidence=0.5), 0)
    assert steps(actions) == ["REFUSED"]
    assert actions[0].record["guardrail"] == "min_confidence"
    assert "0.500" in actions[0].record["reason"]
    assert policies(actions) == [] and pilot.policy("I") == BASELINE["I"]
    assert pilot.on_hypothesis(hyp(status="UPDATED", confidence=0.6), 10) == []  # said once
    encode_all(actions)


def test_refuses_issuer_wide_without_touching_policy() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    actions = pilot.on_hypothesis(hyp(route="*", scope="ISSUER_WIDE"), 0)
    assert steps(actions) == ["REFUSED"] and actions[0].record["guardrail"] == "issuer_wide"
    assert policies(actions) == [] and pilot.version("I") == 0
    # and while it is open, a route hypothesis on the same issuer is refused too
    more = pilot.on_hypothesis(hyp("h2"), 10)
    assert steps(more) == ["REFUSED"] and more[0].record["guardrail"] == "issuer_wide"
    encode_all(actions + more)


def test_starts_experiment_with_probe_share() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    actions, _ = started(pilot)
    exp, pol = actions[0].record, policies(actions)[0]
    assert (exp["from_route"], exp["to_route"]) == ("A", "B")
    assert pol["version"] == 1 and pol["experiment_id"] == exp["experiment_id"]
    assert pilot.policy("I") == pytest.approx({"A": 0.80, "B": 0.20, "C": 0.0})
    assert exp["share"] == pytest.approx(0.20)  # all of the issuer's traffic on the probe arm
    check_weights(pol)
    encode_all(actions)


def test_expands_step_by_step_when_probe_is_better() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    actions, t = started(pilot)
    versions: list[int] = []
    shares: list[float] = []
    for _ in range(40):
        a1, t = feed(pilot, "B", "I", "1111111111", t)
        a2, t = feed(pilot, "A", "I", "1010010101", t)
        actions += a1 + a2
    for a in actions:
        if a.kind == "policy":
            check_weights(a.record)
            versions.append(a.record["version"])
        if a.kind == "experiment" and a.record["step"] == "EXPANDED":
            shares.append(a.record["share"])
    assert versions == sorted(set(versions)) and len(versions) > 2
    assert shares[:2] == pytest.approx([0.45, 0.70])
    assert all(b - a <= 0.25 + 1e-9 for a, b in zip([0.2, *shares], shares, strict=False))
    assert pilot.policy("I")["A"] == pytest.approx(0.02)  # at the cap: the control share stays
    assert "HELD" in steps(actions) and "OBSERVATION" in steps(actions)
    encode_all(actions)


def test_rolls_back_on_harm_and_cools_down() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    actions, t = started(pilot)
    for _ in range(5):
        a1, t = feed(pilot, "B", "I", "0000000001", t)
        a2, t = feed(pilot, "A", "I", "1101101111", t)
        actions += a1 + a2
    back = [a for a in actions if a.kind == "experiment" and a.record["step"] == "ROLLED_BACK"]
    assert len(back) == 1 and back[0].record["statistic"] <= 0.05
    assert pilot.policy("I") == BASELINE["I"] and pilot.active_experiments() == []
    again = pilot.on_hypothesis(hyp("h2", status="OPEN"), t)
    assert steps(again) == ["REFUSED"] and again[0].record["guardrail"] == "cooldown"
    # once the cooldown has passed the still-open hypothesis is retried on a tick
    retry = pilot.on_tick(t + 301_000)
    assert steps(retry) == ["STARTED"]
    encode_all(actions + again + retry)


def test_restores_baseline_on_resolved() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    _, t = started(pilot)
    actions = pilot.on_hypothesis(hyp(status="RESOLVED"), t + 10)
    assert steps(actions) == ["RESTORED"]
    assert policies(actions)[0]["version"] == 2
    assert pilot.policy("I") == BASELINE["I"]
    encode_all(actions)


def test_restores_when_control_arm_recovers() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    _, t = started(pilot)
    actions, t = feed(pilot, "A", "I", "1" * 400, t)
    assert steps(actions)[-1] == "RESTORED"
    assert pilot.policy("I") == BASELINE["I"]


def test_a_lucky_window_on_a_still_degraded_route_does_not_restore() -> None:
    """At 0.80 a 60-outcome window often reads >= 0.89; 400 at 0.80 never clears the bound."""
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    _, t = started(pilot)
    actions, t = feed(pilot, "A", "I", "11110" * 80, t)
    assert "RESTORED" not in steps(actions)


def test_never_shifts_onto_an_unhealthy_route() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    pilot.on_hypothesis(hyp("hb", route="B", confidence=0.3), 0)  # suspect, even if weakly
    actions = pilot.on_hypothesis(hyp(), 10)
    assert steps(actions) == ["STARTED"] and actions[0].record["to_route"] == "C"
    # C observed failing for issuer K, B has an open hypothesis: nowhere to go
    pilot2 = Pilot(NO_PROOF, baseline=BASELINE)
    feed(pilot2, "C", "K", "0001000100", 0)
    pilot2.on_hypothesis(hyp("hb", route="B", issuer="K", confidence=0.3), 2000)
    refused = pilot2.on_hypothesis(hyp("ha", issuer="K"), 2000)
    assert steps(refused) == ["REFUSED"]
    assert refused[0].record["guardrail"] == "no_healthy_alternative"
    assert "C delivered" in refused[0].record["reason"]


def test_probe_route_suspected_mid_experiment_is_rolled_back() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    _, t = started(pilot)
    actions = pilot.on_hypothesis(hyp("hb", route="B"), t + 10)
    assert steps(actions)[0] == "ROLLED_BACK"
    assert actions[0].record["guardrail"] == "unhealthy_probe_route"


def test_max_concurrent_and_one_per_issuer() -> None:
    pilot = Pilot(PilotConfig(max_concurrent_experiments=2, proof_min_obs=0), baseline=BASELINE)
    assert steps(pilot.on_hypothesis(hyp("h1", issuer="M"), 0)) == ["STARTED"]
    busy = pilot.on_hypothesis(hyp("h2", route="C", issuer="M"), 0)
    assert busy[0].record["guardrail"] == "one_experiment_per_issuer"
    assert steps(pilot.on_hypothesis(hyp("h3", issuer="J"), 0)) == ["STARTED"]
    full = pilot.on_hypothesis(hyp("h4", issuer="K"), 0)
    assert full[0].record["guardrail"] == "max_concurrent_experiments"


def test_route_wide_moves_each_issuer_within_capacity() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    actions = pilot.on_hypothesis(hyp("hw", scope="ROUTE_WIDE", issuer="*"), 0)
    assert steps(actions).count("STARTED") == 3
    assert [a.record["guardrail"] for a in actions if a.record.get("step") == "REFUSED"] == [
        "max_concurrent_experiments"]
    encode_all(actions)


def test_inconclusive_probe_is_concluded() -> None:
    pilot = Pilot(NO_PROOF, baseline=BASELINE)
    _, t = started(pilot)
    actions = pilot.on_tick(t + 601_000)
    assert steps(actions) == ["CONCLUDED", "REFUSED"]  # the open hypothesis meets the cooldown
    assert actions[-1].record["guardrail"] == "cooldown"
    assert pilot.policy("I") == BASELINE["I"]


def test_state_survives_json_store_and_restart() -> None:
    store = JsonStore()
    first = Pilot(NO_PROOF, baseline=BASELINE, store=store)
    _, t = started(first)
    second = Pilot(NO_PROOF, baseline=BASELINE, store=store)  # a restarted worker on the same table
    assert second.active_experiments() == first.active_experiments()
    actions = second.on_hypothesis(hyp(status="RESOLVED"), t)
    assert steps(actions) == ["RESTORED"] and policies(actions)[0]["version"] == 2


def test_deterministic() -> None:
    def run() -> list[Action]:
        pilot = Pilot(NO_PROOF, baseline=BASELINE)
        rng = random.Random(7)
        out = pilot.on_hypothesis(hyp(), 0)
        for i in range(3000):
            route = "A" if rng.random() < 0.8 else "B"
            ok = rng.random() < (0.5 if route == "A" else 0.92)
            out += pilot.on_outcome(Outcome(route, "I", "APPROVED" if ok else "ERROR", 1.0, i * 50))
        return out
    assert run() == run()


def test_prob_probe_better() -> None:
    assert prob_probe_better((0, 0), (0, 0)) == pytest.approx(0.5)
    assert prob_probe_better((10, 9), (10, 5)) == pytest.approx(
        1 - prob_probe_better((10, 5), (10, 9)))
    assert prob_probe_better((20, 19), (100, 50)) > 0.999
    rng = random.Random(1)  # Monte Carlo check of the exact sum
    draws = sum(rng.betavariate(8, 4) > rng.betavariate(6, 6) for _ in range(20000)) / 20000
    assert prob_probe_better((10, 7), (10, 5)) == pytest.approx(draws, abs=0.015)
    big = prob_probe_better((20000, 18400), (20000, 18300))  # normal approximation branch
    assert 0.96 < big < 0.97  # z = 0.005 / 0.00271 = 1.84


def test_false_expansion_rate_when_arms_are_equal() -> None:
    """A/A: both routes equally degraded. The probe should rarely be expanded (alpha = 0.01)."""
    expanded = 0
    runs = 60
    for seed in range(runs):
        pilot = Pilot(baseline={"I": {"A": 0.85, "B": 0.15}})
        rng = random.Random(seed)
        pilot.on_hypothesis(hyp(), 0)
        for i in range(3000):  # 5 outcomes/s for 600 s
            route = "A" if rng.random() < 0.8 else "B"
            ok = rng.random() < 0.6
            acts = pilot.on_outcome(Outcome(route, "I", "APPROVED" if ok else "ERROR", 1.0,
                                            i * 200))
            if "EXPANDED" in steps(acts):
                expanded += 1
                break
    assert expanded / runs <= 0.1


def test_no_probe_until_the_alternative_proves_healthy() -> None:
    """An issuer-wide outage starts as one cell's hypothesis: no probe onto routes that have not
    shown health since the degradation began; a probe once one has."""
    pilot = Pilot(baseline=BASELINE)
    first = pilot.on_hypothesis(hyp(), 0)
    assert steps(first) == ["REFUSED"] and first[0].record["guardrail"] == "no_healthy_alternative"
    assert "not yet proven healthy" in first[0].record["reason"] and policies(first) == []
    feed(pilot, "B", "I", "0101011010" * 2, 0)  # B at 0.5 since the degradation: never
    assert steps(pilot.on_tick(2500)) == [] and pilot.policy("I") == BASELINE["I"]
    feed(pilot, "C", "I", "1" * 20, 2500)  # C proves healthy
    later = pilot.on_tick(5000)
    assert steps(later) == ["STARTED"] and later[0].record["to_route"] == "C"


def test_prob_probe_better_equals_the_term_by_term_sum() -> None:
    """The recurrence in _beta_greater against the sum written out with lgamma for every term."""
    import math

    def lbeta(a: float, b: float) -> float:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    def direct(a1: int, b1: int, a2: int, b2: int) -> float:
        if a1 > a2:
            return 1.0 - direct(a2, b2, a1, b1)
        return sum(math.exp(lbeta(a2 + i, b1 + b2) - math.log(b1 + i) - lbeta(1 + i, b1)
                            - lbeta(a2, b2)) for i in range(a1))

    for probe, control in [((10, 9), (10, 5)), ((40, 31), (900, 610)), ((3000, 2900), (4000, 3700)),
                           ((1, 0), (1, 1)), ((250, 250), (250, 0)), ((4999, 4000), (4999, 4100))]:
        (pn, ps), (cn, cs) = probe, control
        want = min(1.0, max(0.0, direct(1 + ps, 1 + pn - ps, 1 + cs, 1 + cn - cs)))
        assert prob_probe_better(probe, control) == pytest.approx(want, rel=1e-9, abs=1e-12)
