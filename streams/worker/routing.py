"""The routing loop's stream glue: outcomes in, hypotheses, experiments and policies out.

Plain code over bytes and records (no Faust), so tests drive it without a broker. The Analyst
reads every admitted outcome and publishes hypotheses; the Pilot reads the hypotheses *topic*
(not the Analyst's return value), so it acts on exactly what an SRE tailing that topic sees, and
on hypotheses from anyone else who publishes there. Both see outcomes in event time.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from agents.routing.analyst import Analyst, AnalystConfig
from agents.routing.outcomes import Outcome
from agents.routing.pilot import Action, Pilot, PilotConfig
from schemas.clock import to_millis
from schemas.codec import Codec
from streams.topics import Topic, topic_name
from streams.worker import metrics
from streams.worker.admission import Output

TICK_MS = 1000  # the Pilot's time-based steps run at most once a second of event time


@dataclass
class RoutingStage:
    codec: Codec
    prefix: str
    baseline: Mapping[str, Mapping[str, float]]
    analyst_store: MutableMapping[str, Any] = field(default_factory=dict)
    pilot_store: MutableMapping[str, Any] = field(default_factory=dict)
    analyst_config: AnalystConfig = field(default_factory=AnalystConfig)
    pilot_config: PilotConfig = field(default_factory=PilotConfig)

    def __post_init__(self) -> None:
        self.analyst = Analyst(self.analyst_config, self.analyst_store)
        self.pilot = Pilot(self.pilot_config, self.baseline, self.pilot_store)
        self.topics = {t: topic_name(t, self.prefix) for t in (
            Topic.ROUTE_OUTCOMES, Topic.HYPOTHESES, Topic.EXPERIMENTS, Topic.ROUTING_POLICY)}
        self.outcomes_topic = topic_name(Topic.AUTH_OUTCOMES, self.prefix)
        self.last_tick_ms = 0

    def hand_over(self, raws: list[bytes]) -> Output:
        """Admitted outcomes, as the gateway encoded them, in one record for the routing topic."""
        topic = self.topics[Topic.ROUTE_OUTCOMES]
        return Output(topic, b"batch", self.codec.encode("outcome_batch", {"items": raws},
                                                         topic=topic))

    def on_outcomes(self, raw: bytes) -> list[Output]:
        batch = self.codec.decode(raw, topic=self.topics[Topic.ROUTE_OUTCOMES],
                                  expect="outcome_batch").record
        out: list[Output] = []
        for item in batch["items"]:
            record = self.codec.decode(item, topic=self.outcomes_topic,
                                       expect="authorization_outcome").record
            out += self.on_outcome(Outcome.from_record(record))
        return out

    def on_outcome(self, outcome: Outcome) -> list[Output]:
        out = [self._hypothesis(h) for h in self.analyst.observe(outcome)]
        actions = self.pilot.on_outcome(outcome)
        if outcome.event_ms - self.last_tick_ms >= TICK_MS:
            self.last_tick_ms = outcome.event_ms
            actions += self.pilot.on_tick(outcome.event_ms)
        return out + [self._action(a) for a in actions]

    def on_hypothesis(self, raw: bytes) -> list[Output]:
        h = self.codec.decode(raw, topic=self.topics[Topic.HYPOTHESES],
                              expect="hypothesis").record
        now_ms = to_millis(h["created_at"])
        return [self._action(a) for a in self.pilot.on_hypothesis(h, now_ms)]

    def _hypothesis(self, h: dict[str, Any]) -> Output:
        metrics.HYPOTHESES.labels(h["status"], h["scope"], h["suspected_cause"]).inc()
        topic = self.topics[Topic.HYPOTHESES]
        key = f"{h['route']}|{h['issuer_id']}".encode()
        return Output(topic, key, self.codec.encode("hypothesis", h, topic=topic))

    def _action(self, action: Action) -> Output:
        if action.kind == "experiment":
            rec = action.record
            metrics.EXPERIMENT_STEPS.labels(rec["step"], rec["guardrail"] or "").inc()
            topic = self.topics[Topic.EXPERIMENTS]
            value = self.codec.encode("experiment", rec, topic=topic)
        else:
            metrics.POLICY_CHANGES.labels(action.key).inc()
            topic = self.topics[Topic.ROUTING_POLICY]
            value = self.codec.encode("routing_policy", action.record, topic=topic)
        metrics.ACTIVE_EXPERIMENTS.set(len(self.pilot.active_experiments()))
        return Output(topic, action.key.encode(), value)
