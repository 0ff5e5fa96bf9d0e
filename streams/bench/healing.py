"""`rakshit bench healing`: the Analyst and the Pilot in a closed loop, in accelerated event time.

No broker: the loop under test is the decision logic, and a month of healthy traffic through Kafka
would take a month. The real agents (agents.routing.analyst, agents.routing.pilot) are driven
exactly as the worker drives them; only the gateway is simulated here, and it follows the Pilot's
policy at once.

Why common random numbers: every scenario is run four times with the same pre-drawn randomness
per attempt (arrival, route choice, delivery, issuer answer, latency): with no action, with an
oracle router (knows the truth, moves each attempt to the best route), with a blunt route-level
failover, and with our agents. Approvals then differ only because routing differed, so the
recovery ratio (ours - none) / (oracle - none) is not drowned in sampling noise.

The targets (README "Self-healing routing", checked by ``targets_met``): detection within 1.5x of
the CUSUM minimax delay (Lorden's approximation, ``LIMITS``), a recovery ratio of at least 0.90 on
the 0.92 -> 0.50 outages, at most one false alarm per cell-month, and no traffic shifted in a
healthy month or an issuer-wide outage. Every figure the README gives is printed by this command.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.routing.analyst import Analyst, AnalystConfig
from agents.routing.outcomes import Outcome
from agents.routing.pilot import Action, Pilot, PilotConfig

ROUTES = ("acq-a", "acq-b", "acq-c")
SUBJECT = "issuer-1"  # the issuer whose cell degrades
OTHERS = ("issuer-2", "issuer-3", "issuer-4")
P0 = 0.92
ISSUER_DECLINE = 0.08
LATENCY_MEDIAN_MS = 180.0
LATENCY_SIGMA = 0.35
TIMEOUT_MS = 3000.0
PRIMARY_WEIGHT = 0.85  # baseline: 85% of an issuer's traffic on its primary route
BACKGROUND_RATE = 2.0  # attempts/s per other issuer, so every cell is observed
HISTORY_ATTEMPTS = 20_000  # attempts on the degraded cell before an outage starts

# CUSUM worst-case delay (attempts) for 0.92 -> p1 at one false alarm per 30 days (the limit).
LIMITS: dict[tuple[float, float], float] = {
    (0.80, 10): 185, (0.80, 50): 207, (0.80, 200): 227,
    (0.70, 10): 69, (0.70, 50): 77, (0.70, 200): 84,
    (0.50, 10): 25, (0.50, 50): 28, (0.50, 200): 30,
}


def baseline_policy() -> dict[str, dict[str, float]]:
    """Each issuer has a primary route (85%) and splits the rest evenly."""
    policy = {}
    for i, issuer in enumerate((SUBJECT, *OTHERS)):
        primary = ROUTES[i % len(ROUTES)]
        rest = (1.0 - PRIMARY_WEIGHT) / (len(ROUTES) - 1)
        policy[issuer] = {r: PRIMARY_WEIGHT if r == primary else rest for r in ROUTES}
    return policy


# -- the world ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    """What degrades, when, and how: cells affected, delivered rate, latency, soft-decline share."""

    cells: frozenset[tuple[str, str]]
    start_s: float
    end_s: float
    success: float = P0
    latency_factor: float = 1.0
    soft_share: float = 0.3  # of route failures, the share that are soft declines
    period_s: float = 0.0  # flapping: on for period/2, off for period/2; 0 = steady

    def active(self, route: str, issuer: str, t: float) -> bool:
        if (route, issuer) not in self.cells or not self.start_s <= t < self.end_s:
            return False
        return self.period_s <= 0 or ((t - self.start_s) % self.period_s) < self.period_s / 2


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # outage | latency | soft-decline | issuer-wide | route-wide | flapping | healthy
    duration_s: float
    subject_rate: float  # attempts/s to the subject issuer's primary cell
    incident: Incident | None
    p1: float | None = None  # the degraded delivered rate, when the limit applies
    shift_expected: bool = True  # False: any traffic shift is wrong (healthy, issuer-wide)

    @property
    def limit_attempts(self) -> float | None:
        if self.kind != "outage" or self.p1 is None:
            return None
        return LIMITS.get((self.p1, self.subject_rate))


def _subject_cell() -> tuple[str, str]:
    weights = baseline_policy()[SUBJECT]
    return max(weights, key=weights.__getitem__), SUBJECT


def scenarios(month_rate: float = 0.5) -> list[Scenario]:
    route, issuer = _subject_cell()
    one = frozenset({(route, issuer)})
    start, outage = 300.0, 900.0
    out = []
    for p1 in (0.80, 0.70, 0.50):
        for rate in (10.0, 50.0, 200.0):
            # The cell has history, as in production: at least 20,000 attempts before the outage
            # (the Analyst's baseline estimate, and so its delay, depends on it).
            warm = max(start, HISTORY_ATTEMPTS / rate)
            out.append(Scenario(f"outage {P0:.2f}->{p1:.2f} @{rate:.0f}/s", "outage",
                                warm + outage + 300.0, rate,
                                Incident(one, warm, warm + outage, success=p1), p1=p1))
    out += [
        Scenario("latency spike x6 @50/s", "latency", 1500.0, 50.0,
                 Incident(one, start, start + outage, latency_factor=6.0)),
        Scenario("soft-decline surge 0.92->0.75 @50/s", "soft-decline", 1500.0, 50.0,
                 Incident(one, start, start + outage, success=0.75, soft_share=0.95)),
        Scenario("issuer-wide outage 0.92->0.50 @50/s", "issuer-wide", 1500.0, 50.0,
                 Incident(frozenset((r, issuer) for r in ROUTES), start, start + outage,
                          success=0.50), shift_expected=False),
        Scenario("route-wide outage 0.92->0.50 @50/s", "route-wide", 1500.0, 50.0,
                 Incident(frozenset((route, i) for i in (SUBJECT, *OTHERS)), start,
                          start + outage, success=0.50)),
        Scenario("flapping 0.92<->0.50 every 120 s @50/s", "flapping", 2100.0, 50.0,
                 Incident(one, start, start + 1500.0, success=0.50, period_s=240.0)),
        Scenario(f"healthy month @{month_rate:g}/s per cell", "healthy", 30 * 86400.0,
                 month_rate, None, shift_expected=False),
    ]
    return out


@dataclass
class Attempts:
    """Pre-drawn randomness for every attempt of one run (common random numbers)."""

    t: np.ndarray  # event time, seconds
    issuer: np.ndarray  # index into ISSUERS
    u_route: np.ndarray
    u_deliver: np.ndarray
    u_issuer: np.ndarray
    u_fail: np.ndarray
    z_latency: np.ndarray


ISSUERS = (SUBJECT, *OTHERS)


def draw(scenario: Scenario, seed: int) -> Attempts:
    rng = np.random.default_rng(seed)
    primary_share = PRIMARY_WEIGHT
    rates = [scenario.subject_rate / primary_share] + [
        (scenario.subject_rate / primary_share if scenario.kind in ("healthy", "route-wide")
         else BACKGROUND_RATE)
        for _ in OTHERS]
    times, issuers = [], []
    for idx, rate in enumerate(rates):
        n = rng.poisson(rate * scenario.duration_s)
        times.append(np.sort(rng.uniform(0.0, scenario.duration_s, n)))
        issuers.append(np.full(n, idx, dtype=np.int8))
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    n = len(t)
    return Attempts(t[order], np.concatenate(issuers)[order], rng.random(n), rng.random(n),
                    rng.random(n), rng.random(n), rng.standard_normal(n))


def truth(scenario: Scenario, route: str, issuer: str, t: float) -> tuple[float, float, float]:
    """(delivered probability, latency factor, soft-decline share) of a cell at time t."""
    inc = scenario.incident
    if inc is not None and inc.active(route, issuer, t):
        return inc.success, inc.latency_factor, inc.soft_share
    return P0, 1.0, 0.3


def outcome(scenario: Scenario, a: Attempts, k: int, route: str) -> tuple[str, float]:
    issuer = ISSUERS[a.issuer[k]]
    p, lat_factor, soft = truth(scenario, route, issuer, float(a.t[k]))
    latency = LATENCY_MEDIAN_MS * lat_factor * math.exp(LATENCY_SIGMA * float(a.z_latency[k]))
    if a.u_deliver[k] < p and latency < TIMEOUT_MS:
        return ("ISSUER_DECLINE" if a.u_issuer[k] < ISSUER_DECLINE else "APPROVED"), latency
    if latency >= TIMEOUT_MS or a.u_fail[k] >= soft + (1 - soft) / 2:
        return "TIMEOUT", TIMEOUT_MS
    return ("SOFT_DECLINE" if a.u_fail[k] < soft else "ERROR"), latency * 0.5


def _choose(weights: Mapping[str, float], u: float) -> str:
    """The route an attempt takes: the gateway's weighted draw, from a pre-drawn uniform."""
    total = sum(weights.values())
    acc, target, last = 0.0, u * total, ""
    for route, w in weights.items():
        acc += w
        last = route
        if target < acc:
            return route
    return last


# -- routers --------------------------------------------------------------------------------------


class Router:
    name = "none"

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.policy = baseline_policy()

    def route(self, a: Attempts, k: int) -> str:
        return _choose(self.policy[ISSUERS[a.issuer[k]]], float(a.u_route[k]))

    def observe(self, o: Outcome) -> None:
        """What the router learns from an outcome; the static router learns nothing."""


class Oracle(Router):
    """Knows the truth: each attempt goes to its issuer's best route at that instant."""

    name = "oracle"

    def route(self, a: Attempts, k: int) -> str:
        issuer, t = ISSUERS[a.issuer[k]], float(a.t[k])
        base = super().route(a, k)
        best = max(ROUTES, key=lambda r: (truth(self.scenario, r, issuer, t)[0], r == base))
        return base if truth(self.scenario, base, issuer, t)[0] >= truth(
            self.scenario, best, issuer, t)[0] else best


class Failover(Router):
    """The blunt baseline: a route whose last 200 attempts (all issuers) fall under 80% delivered
    is taken out for everyone for 5 minutes, its traffic spread over the other routes."""

    name = "failover"
    WINDOW, FLOOR, OFF_S = 200, 0.80, 300.0

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.recent: dict[str, deque[bool]] = {r: deque(maxlen=self.WINDOW) for r in ROUTES}
        self.down_until: dict[str, float] = {}
        self.now = 0.0

    def route(self, a: Attempts, k: int) -> str:
        self.now = float(a.t[k])
        weights = dict(self.policy[ISSUERS[a.issuer[k]]])
        down = {r for r, until in self.down_until.items() if until > self.now}
        if down and len(down) < len(ROUTES):
            for r in down:
                weights[r] = 0.0
        return _choose(weights, float(a.u_route[k]))

    def observe(self, o: Outcome) -> None:
        window = self.recent[o.route]
        window.append(o.delivered)
        if len(window) == self.WINDOW and sum(window) / self.WINDOW < self.FLOOR:
            self.down_until[o.route] = o.event_ms / 1000.0 + self.OFF_S
            window.clear()


# -- a run with our agents ------------------------------------------------------------------------


@dataclass
class Guard:
    """Checks every Pilot action against the Pilot's own configuration and the simulated truth.
    Independent of the Pilot's code: a bug there shows up here as a violation."""

    config: PilotConfig
    scenario: Scenario
    violations: list[str] = field(default_factory=list)
    confidence: dict[str, float] = field(default_factory=dict)
    issuer_wide_open: set[str] = field(default_factory=set)
    cooldown_until: dict[tuple[str, str], float] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)

    def hypothesis(self, h: Mapping[str, Any]) -> None:
        self.confidence[h["hypothesis_id"]] = float(h["confidence"])
        if h["scope"] == "ISSUER_WIDE":
            if h["status"] == "RESOLVED":
                self.issuer_wide_open.discard(h["issuer_id"])
            else:
                self.issuer_wide_open.add(h["issuer_id"])

    def action(self, act: Action, before: Mapping[str, float], now_s: float) -> None:
        rec, cfg = act.record, self.config
        if act.kind == "experiment":
            step, key = rec["step"], (rec["from_route"], rec["issuer_id"])
            if step in ("STARTED", "EXPANDED"):
                conf = self.confidence.get(rec["hypothesis_id"], 0.0)
                if conf < cfg.min_confidence:
                    self.violations.append(f"{step} below min confidence ({conf:.3f})")
                if step == "STARTED" and self.cooldown_until.get(key, -1.0) > now_s:
                    self.violations.append(f"STARTED in cooldown for {key}")
                if rec["issuer_id"] in self.issuer_wide_open:
                    self.violations.append("experiment on an issuer-wide outage")
                target = truth(self.scenario, rec["to_route"], rec["issuer_id"], now_s)[0]
                if target < P0 - 0.1:
                    self.violations.append(f"shifted onto unhealthy {rec['to_route']}")
                if step == "STARTED":
                    self.active.add(rec["experiment_id"])
                    if len(self.active) > cfg.max_concurrent_experiments:
                        self.violations.append("too many concurrent experiments")
            if step in ("ROLLED_BACK", "RESTORED", "CONCLUDED"):
                self.active.discard(rec["experiment_id"])
                self.cooldown_until[key] = now_s + cfg.cooldown_s - 1e-6
            return
        base = baseline_policy()[act.key]
        after = {w["route"]: w["weight"] for w in rec["weights"]}
        if abs(sum(after.values()) - 1.0) > 1e-6 or min(after.values()) < -1e-12:
            self.violations.append("weights not a distribution")
        back_to_base = all(abs(after.get(r, 0.0) - base[r]) < 1e-9 for r in base)
        if not back_to_base:
            step = max(abs(after.get(r, 0.0) - before.get(r, 0.0)) for r in base)
            if step > cfg.max_step_shift + 1e-9:
                self.violations.append(f"step shift {step:.3f}")
            if shifted(base, after) > cfg.max_total_shift + 1e-9:
                self.violations.append("total shift over the cap")
            if act.key in self.issuer_wide_open:
                self.violations.append("policy change on an issuer-wide outage")


def shifted(base: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Share of an issuer's traffic moved off its baseline (sum of the positive moves)."""
    return sum(max(0.0, weights.get(r, 0.0) - w) for r, w in base.items())


@dataclass
class AgentRouter(Router):
    """The gateway following the Pilot's policy; the Analyst and the Pilot fed every outcome."""

    name = "ours"

    def __init__(self, scenario: Scenario, analyst_config: AnalystConfig,
                 pilot_config: PilotConfig) -> None:
        super().__init__(scenario)
        self.analyst = Analyst(analyst_config, {})
        self.pilot = Pilot(pilot_config, baseline_policy(), {})
        self.guard = Guard(pilot_config, scenario)
        self.hypotheses: list[tuple[float, dict[str, Any]]] = []
        self.experiments: list[dict[str, Any]] = []
        self.max_shift = 0.0
        self.last_tick = -1.0

    def _apply(self, actions: Sequence[Action], now_s: float) -> None:
        for act in actions:
            if act.kind == "policy":
                before = self.policy[act.key]
                self.guard.action(act, before, now_s)
                self.policy[act.key] = {w["route"]: w["weight"] for w in act.record["weights"]}
                if act.key == SUBJECT:
                    self.max_shift = max(self.max_shift,
                                         shifted(baseline_policy()[SUBJECT], self.policy[SUBJECT]))
            else:
                self.guard.action(act, {}, now_s)
                self.experiments.append(act.record)

    def observe(self, o: Outcome) -> None:
        now_s = o.event_ms / 1000.0
        for h in self.analyst.observe(o):
            self.hypotheses.append((now_s, h))
            self.guard.hypothesis(h)
            self._apply(self.pilot.on_hypothesis(h, o.event_ms), now_s)
        self._apply(self.pilot.on_outcome(o), now_s)
        if now_s - self.last_tick >= 1.0:
            self.last_tick = now_s
            self._apply(self.pilot.on_tick(o.event_ms), now_s)


def run(scenario: Scenario, router: Router, a: Attempts,
        window: tuple[float, float]) -> dict[str, Any]:
    approvals = 0
    attempts_on_cell_since: list[float] = []  # event times of attempts on the subject cell
    cell = _subject_cell()
    start = scenario.incident.start_s if scenario.incident else 0.0
    for k in range(len(a.t)):
        route = router.route(a, k)
        result, latency = outcome(scenario, a, k, route)
        t = float(a.t[k])
        issuer = ISSUERS[a.issuer[k]]
        if window[0] <= t < window[1] and result == "APPROVED":
            approvals += 1
        if (route, issuer) == cell and t >= start:
            attempts_on_cell_since.append(t)
        router.observe(Outcome(route, issuer, result, latency, int(t * 1000)))
    return {"approvals": approvals, "cell_attempt_times": attempts_on_cell_since}


def _expected_scope(kind: str) -> str:
    return {"issuer-wide": "ISSUER_WIDE", "route-wide": "ROUTE_WIDE"}.get(kind, "ROUTE_ISSUER")


def _is_true(scenario: Scenario, h: Mapping[str, Any], t: float) -> bool:
    """A hypothesis is true if it names a cell (or issuer, or route) degraded at that time or
    within the minute before (the Analyst may speak just after recovery)."""
    inc = scenario.incident
    if inc is None:
        return False
    cells = [(r, i) for r in ROUTES for i in ISSUERS
             if (h["route"] in ("*", r)) and (h["issuer_id"] in ("*", i))]
    return any(inc.active(r, i, t) or inc.active(r, i, t - 60.0) or
               (inc.cells and (r, i) in inc.cells and inc.start_s <= t <= inc.end_s + 120.0)
               for r, i in cells)


@dataclass
class Row:
    name: str
    kind: str
    detection_delay_attempts: float | None
    detection_delay_s: float | None
    limit_attempts: float | None
    false_alarms_per_cell_month: float
    recovery_ratio: float | None
    failover_recovery_ratio: float | None
    max_shift: float
    guardrail_violations: int
    detected: str  # e.g. "3/3" runs
    notes: str = ""


def evaluate(scenario: Scenario, seeds: Sequence[int], analyst_config: AnalystConfig,
             pilot_config: PilotConfig) -> Row:
    delays_n: list[float] = []
    delays_s: list[float] = []
    ratios: list[float] = []
    failover_ratios: list[float] = []
    false_alarms = 0
    violations: list[str] = []
    max_shift = 0.0
    inc = scenario.incident
    window = (inc.start_s, inc.end_s + 60.0) if inc else (0.0, scenario.duration_s)
    want_scope = _expected_scope(scenario.kind)
    for seed in seeds:
        a = draw(scenario, seed)
        ours = AgentRouter(scenario, analyst_config, pilot_config)
        got = run(scenario, ours, a, window)
        max_shift = max(max_shift, ours.max_shift)
        violations += ours.guard.violations
        opened = [(t, h) for t, h in ours.hypotheses if h["status"] in ("OPEN", "UPDATED")]
        first_ids: set[str] = set()
        for t, h in opened:
            if h["hypothesis_id"] in first_ids:
                continue
            first_ids.add(h["hypothesis_id"])
            if not _is_true(scenario, h, t):
                false_alarms += 1
        if inc is not None:
            hits = [t for t, h in opened if t >= inc.start_s and _is_true(scenario, h, t)
                    and (scenario.kind not in ("issuer-wide", "route-wide")
                         or h["scope"] == want_scope)]
            if hits:
                delays_s.append(hits[0] - inc.start_s)
                delays_n.append(float(bisect.bisect_right(got["cell_attempt_times"], hits[0])))
            if scenario.kind != "healthy":
                none = run(scenario, Router(scenario), a, window)["approvals"]
                oracle = run(scenario, Oracle(scenario), a, window)["approvals"]
                failover = run(scenario, Failover(scenario), a, window)["approvals"]
                gain = oracle - none
                if gain > 0:
                    ratios.append((got["approvals"] - none) / gain)
                    failover_ratios.append((failover - none) / gain)
    cells = len(ROUTES) * len(ISSUERS)
    months = len(seeds) * scenario.duration_s / (30 * 86400.0)
    return Row(
        scenario.name, scenario.kind,
        statistics.median(delays_n) if delays_n else None,
        statistics.median(delays_s) if delays_s else None,
        scenario.limit_attempts,
        false_alarms / (cells * months),
        statistics.median(ratios) if ratios and scenario.shift_expected else None,
        statistics.median(failover_ratios) if failover_ratios and scenario.shift_expected
        else None,
        max_shift, len(violations), f"{len(delays_s)}/{len(seeds)}" if inc else "-",
        "; ".join(sorted(set(violations)))[:200])


def format_table(rows: Sequence[Row]) -> str:
    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    head = (f"{'scenario':40} {'detected':>8} {'delay':>7} {'limit':>6} {'x limit':>7} "
            f"{'delay s':>8} {'FA/cell-mo':>10} {'recovery':>8} {'failover':>8} "
            f"{'max shift':>9} {'violations':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = (r.detection_delay_attempts / r.limit_attempts
                 if r.detection_delay_attempts is not None and r.limit_attempts else None)
        lines.append(
            f"{r.name:40} {r.detected:>8} {f(r.detection_delay_attempts, '.0f'):>7} "
            f"{f(r.limit_attempts, '.0f'):>6} {f(ratio, '.2f'):>7} "
            f"{f(r.detection_delay_s, '.2f'):>8} {r.false_alarms_per_cell_month:>10.2f} "
            f"{f(r.recovery_ratio, '.3f'):>8} {f(r.failover_recovery_ratio, '.3f'):>8} "
            f"{r.max_shift:>9.3f} {r.guardrail_violations:>10d}")
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> dict[str, Any]:
    keys = ("name", "kind", "detection_delay_attempts", "limit_attempts",
            "false_alarms_per_cell_month", "recovery_ratio", "failover_recovery_ratio",
            "max_shift", "guardrail_violations")
    return {"scenarios": [{k: asdict(r)[k] for k in keys} | {
        "detection_delay_s": r.detection_delay_s, "detected": r.detected} for r in rows]}


def bench_healing(seeds: int = 3, month_rate: float = 0.5, only: str | None = None,
                  summary_json: Path | None = None,
                  progress: Callable[[str], None] = print) -> list[Row]:
    analyst_config = AnalystConfig()
    pilot_config = PilotConfig()
    rows = []
    for scenario in scenarios(month_rate):
        if only and only not in scenario.name and only != scenario.kind:
            continue
        n = 1 if scenario.kind == "healthy" else seeds
        row = evaluate(scenario, range(1, n + 1), analyst_config, pilot_config)
        progress(format_table([row]).splitlines()[-1])
        rows.append(row)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary(rows), indent=2))
    return rows



def targets_met(rows: Sequence[Row]) -> list[str]:
    """Each target (the module docstring lists them) beside what this run measured, met or not."""
    lines = []
    for r in rows:
        checks = []
        if r.limit_attempts and r.detection_delay_attempts is not None:
            x = r.detection_delay_attempts / r.limit_attempts
            checks.append(f"delay {x:.2f}x limit {'<=' if x <= 1.5 else '>'} 1.5x")
        elif r.limit_attempts:
            checks.append("not detected")
        if r.kind in ("healthy", "issuer-wide"):
            checks.append(f"shift {r.max_shift:.3f} {'== 0' if r.max_shift == 0 else '!= 0'}")
        if r.kind == "outage" and r.name.startswith("outage 0.92->0.50") \
                and r.recovery_ratio is not None:
            checks.append(f"recovery {r.recovery_ratio:.3f} "
                          f"{'>=' if r.recovery_ratio >= 0.9 else '<'} 0.90")
        if r.kind == "healthy":  # the target is measured over the month, not a short run
            checks.append(f"false alarms/cell-month {r.false_alarms_per_cell_month:.2f} "
                          f"{'<=' if r.false_alarms_per_cell_month <= 1 else '>'} 1")
        checks.append(f"violations {r.guardrail_violations}")
        lines.append(f"{r.name}: " + "; ".join(checks))
    return lines
