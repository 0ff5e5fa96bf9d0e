"""The self-healing loop through a real broker: outcomes in, a hypothesis, an experiment and a
routing policy out, and a gateway's routing table that follows the policy.

A worker process (the real `rakshit worker`) reads authorization outcomes for one issuer over
three routes: healthy at first, then one route delivering half its attempts. The Analyst must
publish a hypothesis naming that cell, the Pilot must start an experiment moving a bounded share
of the issuer's traffic to a healthy route, and the policy record must make a RoutingTable send
traffic elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.routing.baseline import write_baseline
from schemas.codec import make_codec
from streams.admin import ensure_topics
from streams.config import Settings
from streams.simulator.routing import ApplyResult, RoutingTable
from streams.topics import Topic
from tests.factories import degrading_outcomes
from tests.kafka_helpers import WorkerProcess, name, produce, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROUTES = ("acq-a", "acq-b", "acq-c")
BASELINE = {"issuer-9": {"acq-a": 0.8, "acq-b": 0.1, "acq-c": 0.1}}


def test_a_degraded_route_is_detected_probed_and_shifted(make_settings: Callable[..., Settings],
                                                         tmp_path: Path) -> None:
    settings = make_settings()
    ensure_topics(settings)
    write_baseline(settings.routing_baseline, BASELINE)
    codec = make_codec(None)
    topic = name(settings, Topic.AUTH_OUTCOMES)
    start = datetime.now(UTC) - timedelta(minutes=10)
    records = [(topic, tx["card_token"].encode(),
                codec.encode("authorization_outcome", rec, topic=topic))
               for tx, rec in degrading_outcomes("issuer-9", ROUTES, start)]

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, records)
        policies = read_all(settings, name(settings, Topic.ROUTING_POLICY), until=1,
                            timeout_s=120)
        hypotheses = read_all(settings, name(settings, Topic.HYPOTHESES), idle_s=2)
        steps = read_all(settings, name(settings, Topic.EXPERIMENTS), idle_s=2)
    finally:
        worker.stop()

    hyps = [codec.decode(r.value, topic=name(settings, Topic.HYPOTHESES),
                         expect="hypothesis").record for r in hypotheses]
    exps = [codec.decode(r.value, topic=name(settings, Topic.EXPERIMENTS),
                         expect="experiment").record for r in steps]
    assert hyps, f"no hypothesis; worker log:\n{worker.log()[-3000:]}"
    first = hyps[0]
    assert (first["route"], first["issuer_id"], first["status"]) == ("acq-a", "issuer-9", "OPEN")
    assert first["scope"] == "ROUTE_ISSUER" and first["confidence"] >= 0.9
    assert first["since"] >= start + timedelta(seconds=0.8 * 6000 * 0.02 - 30)  # not before
    started = [e for e in exps if e["step"] == "STARTED"]
    assert started and started[0]["from_route"] == "acq-a"
    assert started[0]["to_route"] in ("acq-b", "acq-c")

    policy = codec.decode(policies[0].value, topic=name(settings, Topic.ROUTING_POLICY),
                          expect="routing_policy").record
    assert policy["issuer_id"] == "issuer-9" and policy["experiment_id"]
    weights = {w["route"]: w["weight"] for w in policy["weights"]}
    assert weights["acq-a"] < BASELINE["issuer-9"]["acq-a"]
    assert abs(sum(weights.values()) - 1.0) < 1e-9
    moved = sum(max(0.0, weights[r] - BASELINE["issuer-9"][r]) for r in ROUTES)
    assert moved <= 0.25 + 1e-9  # one step, within the Pilot's default max_step_shift

    gateway = RoutingTable(ROUTES, BASELINE)
    assert gateway.apply(policy) is ApplyResult.APPLIED
    assert gateway.weights("issuer-9")["acq-a"] == pytest.approx(weights["acq-a"])
