"""Guardrails as properties: whatever the Analyst says and whatever the routes do, they hold.

Streams are arbitrary interleavings of hypotheses (any status, scope, confidence, cell), bursts of
outcomes (any route, issuer, result) and ticks, with event time never going backwards. Every
invariant is checked after every call, against state the test keeps itself from the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from agents.routing.outcomes import Outcome
from agents.routing.pilot import Action, Pilot, PilotConfig
from schemas.codec import make_codec

BASELINE = {"I": {"A": 0.85, "B": 0.15, "C": 0.0}, "J": {"A": 1.0, "B": 0.0, "C": 0.0},
            "K": {"A": 0.0, "B": 0.5, "C": 0.5}}
ROUTES = ("A", "B", "C")
RESULTS = ("APPROVED", "ISSUER_DECLINE", "SOFT_DECLINE", "ERROR", "TIMEOUT", "UNKNOWN")
TERMINAL = ("ROLLED_BACK", "RESTORED", "CONCLUDED")
CONFIGS = (
    PilotConfig(),
    # fast and loose enough that experiments start, expand and end within a short stream
    PilotConfig(min_confidence=0.5, probe_share=0.1, max_step_shift=0.2, max_total_shift=0.6,
                control_share=0.0, cooldown_s=20.0, max_concurrent_experiments=2,
                min_obs_per_arm=3, min_new_probe_obs=1, expand_interval_s=1.0,
                test_interval_s=0.0, hold_interval_s=5.0, observe_interval_s=2.0,
                max_probe_s=60.0, restore_window=8, health_min_obs=4, proof_min_obs=0),
)
CODEC = make_codec(None)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _hypothesis(scope: str, route: str, issuer: str, episode: int, status: str,
                confidence: float) -> dict[str, Any]:
    # the Analyst's ids are stable per episode of one cell, so the id names the cell
    return {
        "hypothesis_id": f"{scope}:{route}:{issuer}:{episode}", "status": status, "route": route,
        "issuer_id": issuer, "scope": scope, "suspected_cause": "ROUTE_DEGRADED",
        "confidence": confidence, "confidence_meaning": "test",
        "evidence": {"attempts": 30, "successes": 15, "baseline_rate": 0.92,
                     "observed_rate": 0.5, "statistic": 5.0, "threshold": 4.0,
                     "p95_latency_ms": None},
        "since": _EPOCH, "created_at": _EPOCH,
    }


hypotheses = st.builds(
    _hypothesis,
    scope=st.sampled_from(("ROUTE_ISSUER", "ROUTE_ISSUER", "ROUTE_WIDE", "ISSUER_WIDE", "UNKNOWN")),
    route=st.sampled_from(("A", "A", "A", "B", "C", "*", "Z")),
    issuer=st.sampled_from(("I", "J", "J", "K", "*", "Q")),
    episode=st.integers(0, 1),
    status=st.sampled_from(("OPEN", "OPEN", "UPDATED", "RESOLVED", "UNKNOWN")),
    confidence=st.one_of(st.floats(0, 1), st.sampled_from((0.49, 0.5, 0.89, 0.9, 0.95, 1.0))),
)
PATTERNS = {  # route behaviours that make experiments expand, roll back and restore
    "good": ["APPROVED"] * 9 + ["ERROR"], "bad": ["TIMEOUT", "APPROVED", "TIMEOUT", "SOFT_DECLINE"],
    "half": ["APPROVED", "TIMEOUT"], "declines": ["ISSUER_DECLINE", "APPROVED", "UNKNOWN"],
}
bursts = st.tuples(
    st.sampled_from(ROUTES), st.sampled_from(("I", "J", "J", "K")),
    st.one_of(
        st.lists(st.sampled_from(RESULTS), min_size=1, max_size=25),
        st.builds(lambda kind, n: (PATTERNS[kind] * 40)[:n],
                  st.sampled_from(sorted(PATTERNS)), st.integers(1, 80))))
events = st.lists(
    st.tuples(st.integers(0, 8000),
              st.one_of(hypotheses.map(lambda h: ("hyp", h)), bursts.map(lambda b: ("out", b)),
                        st.just(("tick", None)))),
    max_size=80)


@dataclass
class Watch:
    """What the records say happened, kept independently of the Pilot's own state."""

    cfg: PilotConfig
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    cooldown: dict[tuple[str, str], int] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)
    note: bool = False  # report steps as hypothesis events (only inside @given)

    def check(self, actions: list[Action], now: int, *, issuer_wide: bool = False) -> None:
        exp_steps = {a.key: a.record for a in actions if a.kind == "experiment"}
        for action in actions:
            schema = "experiment" if action.kind == "experiment" else "routing_policy"
            CODEC.encode(schema, action.record, topic="t")
            if action.kind == "policy":
                assert not issuer_wide, "an issuer-wide hypothesis moved traffic"
                self.check_policy(action, exp_steps[action.record["experiment_id"]])
            else:
                if self.note:
                    event(action.record["step"])
                self.check_step(action.record, now)
        assert len(self.active) <= self.cfg.max_concurrent_experiments

    def check_policy(self, action: Action, step: dict[str, Any]) -> None:
        issuer, rec = action.key, action.record
        new = {w["route"]: w["weight"] for w in rec["weights"]}
        base = {r: BASELINE[issuer].get(r, 0.0) for r in new}
        assert all(w >= 0 for w in new.values())
        assert abs(sum(new.values()) - 1) < 1e-9
        assert rec["version"] > self.versions.get(issuer, 0)
        self.versions[issuer] = rec["version"]
        moved = sum(max(0.0, new[r] - base[r]) for r in new)
        assert moved <= self.cfg.max_total_shift + 1e-9
        old = self.weights.get(issuer, base)
        if step["step"] in ("STARTED", "EXPANDED"):
            assert max(abs(new[r] - old[r]) for r in new) <= self.cfg.max_step_shift + 1e-9
        else:  # every other policy change goes back to the baseline
            assert step["step"] in TERMINAL and all(abs(new[r] - base[r]) < 1e-12 for r in new)
        self.weights[issuer] = new

    def check_step(self, rec: dict[str, Any], now: int) -> None:
        cell = (rec["from_route"], rec["issuer_id"])
        assert 0.0 <= rec["share"] <= 1.0
        if rec["step"] in ("STARTED", "EXPANDED"):
            assert self.confidence[rec["hypothesis_id"]] >= self.cfg.min_confidence
            assert now >= self.cooldown.get(cell, 0), "moved traffic on a cell in cooldown"
        if rec["step"] == "STARTED":
            self.active.add(rec["experiment_id"])
        elif rec["step"] in TERMINAL:
            self.active.discard(rec["experiment_id"])
            self.cooldown[cell] = now + int(self.cfg.cooldown_s * 1000)
        elif rec["step"] == "REFUSED":
            assert rec["guardrail"]


@settings(max_examples=1000)
@given(cfg=st.sampled_from(CONFIGS), stream=events)
def test_guardrails_hold_for_any_stream(cfg: PilotConfig, stream: list[tuple[int, Any]]) -> None:
    pilot = Pilot(cfg, BASELINE)
    watch = Watch(cfg, note=True)
    now = 0
    for gap, (kind, payload) in stream:
        now += gap
        if kind == "hyp":
            if payload["status"] in ("OPEN", "UPDATED"):
                watch.confidence[payload["hypothesis_id"]] = payload["confidence"]
            actions = pilot.on_hypothesis(payload, now)
            watch.check(actions, now, issuer_wide=payload["scope"] == "ISSUER_WIDE")
        elif kind == "out":
            route, issuer, results = payload
            for result in results:
                now += 50
                watch.check(pilot.on_outcome(Outcome(route, issuer, result, 3.0, now)), now)
        else:
            watch.check(pilot.on_tick(now), now)
        assert set(pilot.active_experiments()) == watch.active
        for issuer in BASELINE:
            weights = pilot.policy(issuer)
            assert abs(sum(weights.values()) - 1) < 1e-9
            assert weights == watch.weights.get(issuer, weights)


@settings(max_examples=150)
@given(cfg=st.sampled_from(CONFIGS), stream=events, split=st.integers(0, 60))
def test_replay_is_deterministic(cfg: PilotConfig, stream: list[tuple[int, Any]],
                                 split: int) -> None:
    def run() -> list[Action]:
        pilot, now, out = Pilot(cfg, BASELINE), 0, []
        for gap, (kind, payload) in stream[:split] + stream[split:]:
            now += gap
            if kind == "hyp":
                out += pilot.on_hypothesis(payload, now)
            elif kind == "out":
                for result in payload[2]:
                    now += 50
                    out += pilot.on_outcome(Outcome(payload[0], payload[1], result, 3.0, now))
            else:
                out += pilot.on_tick(now)
        return out
    assert run() == run()


def test_guardrails_hold_in_a_long_outage() -> None:
    """A directed case the random streams reach rarely: a full heal, expansion to the cap."""
    cfg = CONFIGS[1]
    pilot, watch = Pilot(cfg, BASELINE), Watch(cfg)
    hyp = _hypothesis("ROUTE_ISSUER", "A", "J", 0, "OPEN", 0.99)
    watch.confidence[hyp["hypothesis_id"]] = 0.99
    watch.check(pilot.on_hypothesis(hyp, 0), 0)
    now = 0
    for i in range(400):
        now += 100
        route = "B" if i % 3 else "A"
        result = "APPROVED" if route == "B" or i % 2 else "TIMEOUT"
        watch.check(pilot.on_outcome(Outcome(route, "J", result, 1.0, now)), now)
    assert abs(pilot.policy("J")["A"] - (1.0 - cfg.max_total_shift)) < 1e-9
