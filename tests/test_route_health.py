"""Route health windows in event time: counts, rates, percentiles, late events, JSON state."""

from __future__ import annotations

import json
import math
import random

import pytest

from agents.routing import route_health as rh
from agents.routing.outcomes import Outcome

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000  # an hour boundary


def out(result: str, ms: int, latency: float = 100.0) -> Outcome:
    return Outcome("r1", "i1", result, latency, ms)


def test_issuer_declines_are_delivered_not_failures() -> None:
    state = None
    for i, result in enumerate(["APPROVED"] * 6 + ["ISSUER_DECLINE"] * 2
                               + ["SOFT_DECLINE", "ERROR", "TIMEOUT", "UNKNOWN"]):
        state = rh.observe(state, out(result, T0 + i))
    s = rh.summary(state, T0 + 100, 60)
    assert s["attempts"] == 11  # UNKNOWN says nothing about the route
    assert s["delivered"] == 8 and s["approvals"] == 6
    assert s["success_rate"] == pytest.approx(8 / 11)
    assert s["approval_rate"] == pytest.approx(6 / 11)
    assert s["counts"] == {"APPROVED": 6, "ISSUER_DECLINE": 2, "SOFT_DECLINE": 1, "ERROR": 1,
                           "TIMEOUT": 1, "UNKNOWN": 1}


def test_windows_slide_in_event_time() -> None:
    state = None
    # one attempt per second for 2 hours; failures only in the last 30 s
    for sec in range(7200):
        result = "ERROR" if sec >= 7170 else "APPROVED"
        state = rh.observe(state, out(result, T0 + sec * 1000))
    now = T0 + 7199 * 1000
    one, five, hour = (rh.summary(state, now, w) for w in (60, 300, 3600))
    assert 50 <= one["attempts"] <= 60 and one["counts"]["ERROR"] == 30
    assert 290 <= five["attempts"] <= 300
    assert 3540 <= hour["attempts"] <= 3600  # the coarse ring forgot the first hour
    assert hour["success_rate"] > five["success_rate"] > one["success_rate"]
    # an hour later nothing is left in any window
    assert rh.summary(state, now + 3_700_000, 3600)["attempts"] == 0
    assert rh.summary(state, now + 3_700_000, 60)["success_rate"] is None


def test_percentiles_match_lognormal_within_bin_resolution() -> None:
    rng = random.Random(3)
    mu, sigma = math.log(150.0), 0.4
    state = None
    for i in range(20_000):
        state = rh.observe(state, out("APPROVED", T0 + i * 10, rng.lognormvariate(mu, sigma)))
    s = rh.summary(state, T0 + 20_000 * 10, 300)
    for key, z in (("p50_latency_ms", 0.0), ("p95_latency_ms", 1.6449), ("p99_latency_ms", 2.3263)):
        true = math.exp(mu + z * sigma)
        assert s[key] == pytest.approx(true, rel=0.08), key
    assert s["p50_latency_ms"] < s["p95_latency_ms"] < s["p99_latency_ms"]


def test_late_events_counted_in_their_bucket_too_late_dropped() -> None:
    state = None
    for sec in range(400):
        state = rh.observe(state, out("APPROVED", T0 + sec * 1000))
    now = T0 + 399 * 1000
    # 20 s late: inside every window, counted where it belongs
    state = rh.observe(state, out("TIMEOUT", now - 20_000, 5000.0))
    assert rh.summary(state, now, 60)["counts"]["TIMEOUT"] == 1
    # 6 min late: older than the fine ring (dropped there) but inside the hour
    state = rh.observe(state, out("ERROR", now - 360_000))
    assert rh.summary(state, now, 300)["counts"]["ERROR"] == 0
    assert rh.summary(state, now, 300)["late_dropped"] == 1
    assert rh.summary(state, now, 3600)["counts"]["ERROR"] == 1
    # 2 h late: dropped everywhere, and counted as such
    state = rh.observe(state, out("ERROR", now - 7_200_000))
    assert rh.summary(state, now, 3600)["late_dropped"] == 1
    assert rh.summary(state, now, 300)["late_dropped"] == 2
    assert rh.summary(state, now, 3600)["counts"]["ERROR"] == 1


def test_state_is_plain_json_and_survives_a_round_trip() -> None:
    state = None
    for i in range(500):
        state = rh.observe(state, out("APPROVED" if i % 7 else "SOFT_DECLINE", T0 + i * 700))
    copy = json.loads(json.dumps(state))
    now = T0 + 500 * 700
    assert rh.summary(copy, now, 300) == rh.summary(state, now, 300)
    copy = rh.observe(copy, out("ERROR", now))
    assert rh.summary(copy, now, 60)["counts"]["ERROR"] == 1


def test_latency_bins_are_monotone_and_bounded() -> None:
    bins = [rh.latency_bin(x) for x in (0.2, 1, 2, 10, 100, 1000, 10_000, 10**6)]
    assert bins == sorted(bins) and bins[0] == 0 and bins[-1] == rh.LATENCY_BINS - 1
    for b in range(1, rh.LATENCY_BINS - 1):
        assert rh.latency_bin(rh.bin_lower_ms(b) * 1.01) == b
