"""The executor agent (agents/fraud/executor.py): time budget, retries with backoff and the circuit
breaker, on a fake clock so timeouts and cool-downs are exact."""

from __future__ import annotations

import pytest

from agents.fraud.executor import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CircuitBreaker,
    Executor,
    RetryConfig,
    TransientError,
)
from tests.fraud_helpers import FakeClock


def test_breaker_opens_after_n_failures_and_half_opens_after_the_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, cool_down_s=30.0), clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.advance(29.9)
    assert breaker.state == OPEN
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN
    assert breaker.allow()          # one trial ...
    assert not breaker.allow()      # ... at a time
    breaker.record_failure()        # the trial failed: open for a fresh cool-down
    assert breaker.state == OPEN
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.consecutive_failures == 0


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2), FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_open_circuit_skips_the_model_without_calling_it() -> None:
    clock = FakeClock()
    executor = Executor(breaker=CircuitBreaker(BreakerConfig(2, 5.0), clock), clock=clock,
                        sleep=clock.sleep)
    calls = []

    def broken() -> str:
        calls.append(1)
        raise ValueError("bad model")

    outcomes = [executor.run(broken, lambda: "rules") for _ in range(4)]
    assert [o.fallbacks for o in outcomes] == [("model_error",)] * 2 + [("circuit_open",)] * 2
    assert len(calls) == 2
    assert all(o.result == "rules" and o.used == "fallback" for o in outcomes)
    clock.advance(5.0)
    assert executor.run(lambda: "model", lambda: "rules").result == "model"
    assert executor.breaker.state == CLOSED


def test_an_answer_after_the_budget_is_discarded_for_the_simpler_model() -> None:
    clock = FakeClock()
    executor = Executor(budget_s=0.05, clock=clock, sleep=clock.sleep)

    def slow() -> str:
        clock.advance(0.051)
        return "model"

    out = executor.run(slow, lambda: "rules")
    assert (out.result, out.used, out.fallbacks) == ("rules", "fallback", ("model_timeout",))
    assert out.elapsed_ms >= 51.0
    assert executor.breaker.consecutive_failures == 1

    def quick() -> str:
        clock.advance(0.049)
        return "model"

    assert executor.run(quick, lambda: "rules").result == "model"


def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    clock = FakeClock()
    retry = RetryConfig(attempts=4, base_delay_s=0.001, multiplier=2.0, max_delay_s=1.0)
    executor = Executor(budget_s=1.0, retry=retry, clock=clock, sleep=clock.sleep)
    failures = [TransientError(), ConnectionError()]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "model"

    out = executor.run(flaky, lambda: "rules")
    assert (out.result, out.attempts, out.errors) == ("model", 3,
                                                      ("TransientError", "ConnectionError"))
    assert clock.slept == [retry.delay(1), retry.delay(2)]
    assert clock.slept[1] == pytest.approx(2 * clock.slept[0])
    assert executor.breaker.consecutive_failures == 0


def test_retries_stop_at_the_budget_and_other_errors_are_not_retried() -> None:
    clock = FakeClock()
    retry = RetryConfig(attempts=10, base_delay_s=0.004, multiplier=2.0, max_delay_s=1.0)
    executor = Executor(budget_s=0.02, retry=retry, clock=clock, sleep=clock.sleep)

    def always_transient() -> str:
        raise TransientError()

    out = executor.run(always_transient, lambda: "rules")
    assert out.fallbacks == ("model_transient_error",)
    assert sum(clock.slept) < 0.02 and out.attempts < 10
    calls = []

    def buggy() -> str:
        calls.append(1)
        raise KeyError("x")

    assert executor.run(buggy, lambda: "rules").fallbacks == ("model_error",)
    assert len(calls) == 1
