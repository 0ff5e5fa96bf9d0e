"""The executor agent: runs the model under a time budget, with retries and a circuit breaker.

**How the time budget is enforced without threads.** Synchronous Python cannot interrupt a call in
progress: a thread cannot be killed, and ``signal.alarm`` only works on the main thread and would
fire inside whatever the Faust event loop happens to be running. A thread pool with
``future.result(timeout)`` only *abandons* the call: on our two cores the abandoned LightGBM call
keeps burning a core while the next transaction is scored, and under sustained slowness abandoned
calls pile up. So the executor measures instead: each attempt is timed with an injectable monotonic
clock, and a result that arrives after the budget is **discarded** and treated as a timeout. The
verdict then comes from the simpler model (the rules), exactly as if the deadline had cut the call
short, so the outcome does not depend on how the deadline is enforced. The cost of an overrun is
paid once per slow call, and the circuit breaker bounds how many calls pay it: slow calls count as
failures, so a model that has become slow is skipped after ``failure_threshold`` of them.

**Retries** only for errors that are plausibly transient (``TransientError``, ``TimeoutError``,
``ConnectionError``), with exponential backoff, and never past the budget: a retry whose backoff
would end after the deadline is not attempted. Anything else is a bug or a bad model and is not
retried.

**Circuit breaker**: ``closed`` (calls go through; consecutive failed calls are counted) -> after
``failure_threshold`` of them ``open`` (calls are refused at once, the fallback answers) -> after
``cool_down_s`` ``half_open`` (one trial call; success closes, failure re-opens for another
cool-down). A call that succeeded on a retry counts as a success: the model works.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerConfig",
    "CircuitBreaker",
    "Execution",
    "Executor",
    "RetryConfig",
    "TransientError",
]

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class TransientError(Exception):
    """Raised by a scorer for a failure worth retrying (a lock held, a reload in progress)."""


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    cool_down_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.cool_down_s < 0:
            raise ValueError("failure_threshold >= 1 and cool_down_s >= 0 required")


class CircuitBreaker:
    """Closed / open / half-open, on an injectable monotonic clock (seconds)."""

    def __init__(self, config: BreakerConfig = BreakerConfig(),
                 clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.config.cool_down_s:
            self._state = HALF_OPEN
            self._trial_in_flight = False
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one trial at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._state = CLOSED
        self._failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == HALF_OPEN or self._failures >= self.config.failure_threshold:
            self._state = OPEN
            self._opened_at = self._clock()
            self._trial_in_flight = False


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 3  # tries in total, the first included
    base_delay_s: float = 0.001
    multiplier: float = 2.0
    max_delay_s: float = 0.01

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def delay(self, retry: int) -> float:
        """Backoff before retry number ``retry`` (1 for the first retry)."""
        return float(min(self.max_delay_s, self.base_delay_s * self.multiplier ** (retry - 1)))


@dataclass(frozen=True)
class Execution(Generic[T]):
    """What ran and why: the verdict's fallbacks come from ``fallbacks``."""

    result: T
    used: str  # "primary" | "fallback"
    attempts: int
    elapsed_ms: float
    fallbacks: tuple[str, ...]
    breaker_state: str
    errors: tuple[str, ...]  # exception class names, in order (no messages: they may hold data)


class Executor:
    """Runs ``primary`` within ``budget_s``; anything that goes wrong answers with ``fallback``."""

    def __init__(self, budget_s: float = 0.02, retry: RetryConfig = RetryConfig(),
                 breaker: CircuitBreaker | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep,
                 transient: tuple[type[BaseException], ...] = (TransientError, TimeoutError,
                                                                ConnectionError)) -> None:
        if budget_s <= 0:
            raise ValueError("budget_s must be positive")
        self.budget_s = budget_s
        self.retry = retry
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._transient = transient

    def run(self, primary: Callable[[], T], fallback: Callable[[], T],
            budget_s: float | None = None) -> Execution[T]:
        """``budget_s`` overrides the configured budget for this call (a batch of rows)."""
        start = self._clock()
        budget = self.budget_s if budget_s is None else budget_s

        def done(result: T, used: str, attempts: int, fallbacks: tuple[str, ...],
                 errors: tuple[str, ...]) -> Execution[T]:
            return Execution(result, used, attempts, (self._clock() - start) * 1000.0, fallbacks,
                             self.breaker.state, errors)

        if not self.breaker.allow():
            return done(fallback(), "fallback", 0, ("circuit_open",), ())
        errors: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                result = primary()
            except self._transient as exc:
                errors.append(type(exc).__name__)
                retry_at = self._clock() - start + self.retry.delay(attempt)
                if attempt < self.retry.attempts and retry_at < budget:
                    self._sleep(self.retry.delay(attempt))
                    continue
                self.breaker.record_failure()
                return done(fallback(), "fallback", attempt, ("model_transient_error",),
                            tuple(errors))
            except Exception as exc:
                errors.append(type(exc).__name__)
                self.breaker.record_failure()
                return done(fallback(), "fallback", attempt, ("model_error",), tuple(errors))
            if self._clock() - start > budget:
                # Too late to use: see the module docstring for why it is discarded.
                self.breaker.record_failure()
                return done(fallback(), "fallback", attempt, ("model_timeout",), tuple(errors))
            self.breaker.record_success()
            return done(result, "primary", attempt, (), tuple(errors))
