"""The Pilot: turns the Analyst's hypotheses into small, guarded routing experiments.

The Analyst only believes; the Pilot acts, so every hard limit lives here and is a configuration
value (``PilotConfig``). A hypothesis never moves traffic by itself: it earns a *probe* (a small
share of one issuer's traffic moved from the suspect route to the best healthy alternative), and
only the outcomes of both arms can grow the probe. Why a probe and not a failover: a hypothesis can
be wrong, the alternative can be worse, and a probe that is wrong costs ``probe_share`` of one
issuer's traffic for a few seconds instead of all of it.

The sequential test is Bayesian Beta-Binomial: with uniform priors on each arm's delivered rate,
``P(p_probe > p_control)`` is computed exactly (no sampling, so replay gives the same answer). It is
looked at no more often than every ``expand_interval_s`` once both arms hold ``min_obs_per_arm``
outcomes. At or above ``1 - alpha`` the probe is better and may expand by at most
``max_step_shift``; at or below ``beta`` it is worse and is rolled back at once. ``alpha`` is the
posterior risk accepted when expanding onto a probe that is not better, ``beta`` the risk when
rolling back one that is. These are posterior error probabilities at the moment of stopping, not
frequentist rates: repeated looks inflate them. In an A/A test (both arms equal) the probe is
wrongly expanded several times more often than ``alpha``; tests/test_pilot.py bounds how often.
Each later step is gated again, and harm still rolls it back.

Only moves *away* from the baseline policy are bounded per step: a rollback or restore goes back to
the static configuration in one step, because that configuration is the known-good state and a
gradual retreat from a harmful probe only prolongs the harm.

Everything the Pilot remembers lives in ``store`` as JSON values under string keys, written back
by assignment (never mutated in place), so a Faust table can hold it and a restarted worker
resumes where the last one stopped. Time is event time only; there is no clock and no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from agents.routing.outcomes import Outcome, cell_key
from schemas.clock import from_millis, millis_of

__all__ = ["Action", "Pilot", "PilotConfig", "prob_probe_better"]

ANY = "*"
_EPS = 1e-9
_LIVE = ("OPEN", "UPDATED")
_SCOPES = ("ROUTE_ISSUER", "ISSUER_WIDE", "ROUTE_WIDE")


@dataclass(frozen=True)
class PilotConfig:
    """Every guardrail, with a default that is safe on its own.

    ``max_total_shift`` defaults to 1.0 on purpose: healing a route at 0.50 success means moving
    nearly all of its share, and each extra step must first pass the sequential test. What keeps
    the suspect route observable is ``control_share``, the slice never moved off it (recovery can
    only be seen on traffic that still flows there).
    """

    min_confidence: float = 0.9
    probe_share: float = 0.05  # first step: issuer traffic moved onto the probe route
    max_step_shift: float = 0.25  # largest change of any weight in one step away from baseline
    max_total_shift: float = 1.0  # largest share of an issuer's traffic off its baseline policy
    control_share: float = 0.02  # left on the suspect route so its recovery stays visible
    cooldown_s: float = 300.0  # per (route, issuer) after an experiment ends
    max_concurrent_experiments: int = 3
    min_obs_per_arm: int = 10  # outcomes on each arm before the test is consulted
    min_new_probe_obs: int = 5  # fresh probe outcomes needed after each step before the next
    alpha: float = 0.01  # expand when P(probe better) >= 1 - alpha
    beta: float = 0.05  # roll back when P(probe better) <= beta
    expand_interval_s: float = 5.0  # minimum event time between two steps of one experiment
    test_interval_s: float = 1.0  # the test is consulted at most this often (its cost grows)
    hold_interval_s: float = 30.0  # an undecided experiment says HELD this often
    observe_interval_s: float = 10.0  # OBSERVATION records at most this often
    max_probe_s: float = 600.0  # a probe never expanded by then is concluded, inconclusive
    max_experiment_s: float = 4 * 3600.0  # any experiment is concluded after this
    # A backstop for a RESOLVED hypothesis that never comes: control outcomes per recovery check
    # (tumbling window), recovered when the window's 99% lower bound (Wilson) reaches the
    # baseline minus the tolerance. 60 outcomes with a plain rate test restored a route still at
    # 0.80 within seconds (measured by `rakshit bench healing`): noise, not recovery.
    restore_window: int = 400
    restore_tolerance: float = 0.04
    restore_z: float = 2.326
    health_min_obs: int = 10  # outcomes on a candidate cell before its rate can condemn it
    health_floor: float = 0.70  # a candidate below this delivered rate is unhealthy
    health_margin: float = 0.15  # ... or below the suspect's baseline rate minus this
    health_z: float = 1.645  # one-sided Wilson bound used on recent candidate outcomes
    # A candidate must *prove* health since the degradation began, not merely not look bad:
    # this many outcomes since `since` whose lower bound reaches proof_floor. Without it, an
    # issuer-wide outage (every route degraded) got a probe on its first, single-cell hypothesis,
    # before the other cells had alarmed (measured by `rakshit bench healing`).
    proof_min_obs: int = 20
    proof_floor: float = 0.65
    prior_rate: float = 0.85  # prior delivered rate of a cell never observed
    prior_weight: float = 10.0  # pseudo-outcomes behind that prior
    experience_weight: float = 5.0  # pseudo-outcomes per past experiment won/lost on a cell
    stats_half_life_s: float = 900.0  # memory of the per-cell delivered rate
    recent_size: int = 64  # recent outcomes kept per cell for the health check

    def __post_init__(self) -> None:
        shares = (self.probe_share, self.max_step_shift, self.max_total_shift, self.control_share)
        if not all(0.0 <= s <= 1.0 for s in shares) or self.probe_share <= 0:
            raise ValueError("shares must lie in [0, 1] and probe_share must be positive")
        if self.probe_share > self.max_step_shift:
            raise ValueError("probe_share cannot exceed max_step_shift")
        if not (0.0 < self.alpha < 0.5 and 0.0 < self.beta < 0.5):
            raise ValueError("alpha and beta must lie in (0, 0.5)")
        if self.max_concurrent_experiments < 0 or self.min_obs_per_arm < 1:
            raise ValueError("max_concurrent_experiments >= 0 and min_obs_per_arm >= 1")
        if self.restore_window < 1 or self.recent_size < 1:
            raise ValueError("restore_window and recent_size must be positive")


@dataclass(frozen=True)
class Action:
    """A record to publish: experiment records keyed by experiment_id, policies by issuer_id."""

    kind: Literal["experiment", "policy"]
    key: str
    record: dict[str, Any]


@dataclass(frozen=True)
class _Hyp:
    id: str
    status: str
    scope: str
    route: str
    issuer: str
    confidence: float
    baseline_rate: float
    since_ms: int

    @property
    def cell(self) -> str:
        return cell_key(self.route, self.issuer)


# --- statistics ---------------------------------------------------------------------------


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_greater(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X1 > X2) for X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2): exact sum over min(a1, a2) terms."""
    if a1 > a2:
        return 1.0 - _beta_greater(a2, b2, a1, b1)
    if a1 > 5000:  # both arms are huge; the normal approximation is exact to display precision
        m1, m2 = a1 / (a1 + b1), a2 / (a2 + b2)
        v1 = m1 * (1 - m1) / (a1 + b1 + 1)
        v2 = m2 * (1 - m2) / (a2 + b2 + 1)
        return 0.5 * math.erfc(-(m1 - m2) / math.sqrt(2 * (v1 + v2)))
    # Term i is exp(lB(a2+i, b1+b2) - log(b1+i) - lB(1+i, b1) - lB(a2, b2)); consecutive terms
    # differ by the factor (a2+i)(b1+i) / ((a2+i+b1+b2)(1+i)), so the log of each term follows
    # from the last with two logs instead of nine lgammas (the Pilot tests after outcomes).
    log_term = _lbeta(a2, b1 + b2) - math.log(b1) - _lbeta(1, b1) - _lbeta(a2, b2)
    total = 0.0
    for i in range(a1):
        total += math.exp(log_term)
        log_term += math.log((a2 + i) * (b1 + i)) - math.log((a2 + i + b1 + b2) * (1 + i))
    return min(1.0, max(0.0, total))


def _wilson_lower(rate: float, n: int, z: float) -> float:
    """Lower end of the Wilson score interval for a rate seen over n trials."""
    if n <= 0:
        return 0.0
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def prob_probe_better(probe: tuple[int, int], control: tuple[int, int]) -> float:
    """Posterior P(p_probe > p_control), arms as (attempts, delivered), uniform priors."""
    (pn, ps), (cn, cs) = probe, control
    return _beta_greater(1 + ps, 1 + pn - ps, 1 + cs, 1 + cn - cs)


def _wilson_upper(successes: float, n: float, z: float) -> float:
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + margin) / (1 + z * z / n)


def _parse(h: Mapping[str, Any]) -> _Hyp:
    """A hypothesis with numbers checked; a non-finite confidence reads as 0 (earns no move)."""
    evidence = h.get("evidence") or {}
    conf = float(h.get("confidence", 0.0))
    rate = float(evidence.get("baseline_rate", float("nan")))
    hyp = _Hyp(
        id=str(h["hypothesis_id"]), status=str(h.get("status", "UNKNOWN")),
        scope=str(h.get("scope", "UNKNOWN")), route=str(h.get("route", ANY)),
        issuer=str(h.get("issuer_id", ANY)),
        confidence=conf if math.isfinite(conf) else 0.0,
        baseline_rate=min(1.0, max(0.0, rate)) if math.isfinite(rate) else 0.9,
        since_ms=millis_of(h["since"]) if h.get("since") is not None else 0,
    )
    # One spelling per scope, so open hypotheses can be found by key and never by scanning.
    if hyp.scope == "ISSUER_WIDE":
        return replace(hyp, route=ANY)
    if hyp.scope == "ROUTE_WIDE":
        return replace(hyp, issuer=ANY)
    return hyp


# --- the agent ----------------------------------------------------------------------------


class Pilot:
    """One instance per worker partition; all state is in ``store`` (see the module docstring)."""

    def __init__(
        self,
        config: PilotConfig | None = None,
        baseline: Mapping[str, Mapping[str, float]] | None = None,
        store: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.config = config or PilotConfig()
        self._baseline: dict[str, dict[str, float]] = {}
        for issuer, weights in (baseline or {}).items():
            values = {r: float(w) for r, w in weights.items()}
            total = sum(values.values())
            if any(not math.isfinite(w) or w < 0 for w in values.values()) or total <= 0:
                raise ValueError(f"baseline weights of {issuer!r} must be non-negative, sum > 0")
            self._baseline[issuer] = {r: w / total for r, w in values.items()}
        self._routes = sorted({r for w in self._baseline.values() for r in w})
        self._store: MutableMapping[str, Any] = store if store is not None else {}

    # --- public API ---------------------------------------------------------------------

    def policy(self, issuer_id: str) -> dict[str, float]:
        """Weights in force for the issuer: the last published policy, else the baseline."""
        stored = self._store.get(f"policy:{issuer_id}")
        if stored is not None:
            return {r: float(w) for r, w in stored["weights"].items()}
        return self._full_baseline(issuer_id)

    def version(self, issuer_id: str) -> int:
        stored = self._store.get(f"policy:{issuer_id}")
        return int(stored["version"]) if stored is not None else 0

    def active_experiments(self) -> list[str]:
        return list(self._store.get("active", []))

    def on_hypothesis(self, hypothesis: Mapping[str, Any], now_ms: int) -> list[Action]:
        now = self._tick_clock(now_ms)
        try:
            hyp = _parse(hypothesis)
        except (KeyError, TypeError, ValueError):
            return []  # no id to answer to; the Analyst's schema makes this a bug upstream
        if hyp.status == "RESOLVED":
            return self._resolve(hyp, now)
        if hyp.status not in _LIVE:
            return []
        self._remember(hyp)
        actions = self._probe_route_hit(hyp, now) if hyp.scope != "ISSUER_WIDE" else []
        return actions + self._evaluate(hyp, now)

    def on_outcome(self, outcome: Outcome) -> list[Action]:
        now = self._tick_clock(outcome.event_ms)
        if not outcome.counts_for_route:
            return []
        self._learn(outcome)
        actions: list[Action] = []
        for exp_id in self.active_experiments():
            exp = dict(self._store[f"exp:{exp_id}"])
            if exp["issuer"] != outcome.issuer_id or outcome.event_ms < exp["started"]:
                continue
            ok = int(outcome.delivered)
            if outcome.route == exp["from"]:
                exp["cn"], exp["cs"] = exp["cn"] + 1, exp["cs"] + ok
                exp["wn"], exp["ws"] = exp["wn"] + 1, exp["ws"] + ok
            elif outcome.route == exp["to"]:
                exp["pn"], exp["ps"] = exp["pn"] + 1, exp["ps"] + ok
            else:
                continue
            self._store[f"exp:{exp_id}"] = exp
            actions += self._advance(exp, now)
        return actions

    def on_tick(self, now_ms: int) -> list[Action]:
        now = self._tick_clock(now_ms)
        actions: list[Action] = []
        for exp_id in self.active_experiments():
            actions += self._advance(dict(self._store[f"exp:{exp_id}"]), now)
        for cell in list(self._store.get("open", [])):  # retry what cooldowns or capacity blocked
            stored = self._store.get(f"hyp:{cell}")
            if stored is not None and stored["scope"] != "ISSUER_WIDE":
                actions += self._evaluate(_Hyp(**stored), now)
        return actions

    # --- hypotheses ---------------------------------------------------------------------

    def _remember(self, hyp: _Hyp) -> None:
        self._store[f"hyp:{hyp.cell}"] = hyp.__dict__.copy()
        self._store["open"] = sorted({*self._store.get("open", []), hyp.cell})
        for exp_id in self.active_experiments():  # an experiment follows its hypothesis' confidence
            exp = dict(self._store[f"exp:{exp_id}"])
            if exp["hyp"] == hyp.id:
                exp["confidence"] = hyp.confidence
                self._store[f"exp:{exp_id}"] = exp

    def _resolve(self, hyp: _Hyp, now: int) -> list[Action]:
        stored = self._store.get(f"hyp:{hyp.cell}")
        if stored is not None and stored["id"] == hyp.id:
            del self._store[f"hyp:{hyp.cell}"]
            self._store["open"] = [c for c in self._store.get("open", []) if c != hyp.cell]
        self._store.pop(f"refused:{hyp.id}", None)
        actions: list[Action] = []
        for exp_id in self.active_experiments():
            exp = dict(self._store[f"exp:{exp_id}"])
            exp_cell = cell_key(exp["from"], exp["issuer"])
            same_cell = hyp.scope == "ROUTE_ISSUER" and exp_cell == hyp.cell
            if exp["hyp"] == hyp.id or same_cell:
                reason = (f"hypothesis {hyp.id} resolved: {exp['from']} recovered for "
                          f"{exp['issuer']}, traffic goes back to the baseline weights")
                actions += self._end(exp, "RESTORED", None, reason, now)
        return actions

    def _probe_route_hit(self, hyp: _Hyp, now: int) -> list[Action]:
        """A hypothesis against an experiment's probe route ends it: never keep traffic there."""
        actions: list[Action] = []
        for exp_id in self.active_experiments():
            exp = dict(self._store[f"exp:{exp_id}"])
            hits_issuer = hyp.scope == "ROUTE_WIDE" or hyp.issuer == exp["issuer"]
            if hyp.route == exp["to"] and hits_issuer:
                reason = (f"hypothesis {hyp.id} now suspects the probe route {exp['to']} for "
                          f"{exp['issuer']}; moved traffic goes back to the baseline weights")
                actions += self._end(exp, "ROLLED_BACK", "unhealthy_probe_route", reason, now)
        return actions

    def _evaluate(self, hyp: _Hyp, now: int) -> list[Action]:
        if hyp.scope == "ISSUER_WIDE":
            why = (f"every route to {hyp.issuer} is suspected (issuer-wide), so rerouting "
                   "cannot help; no traffic is moved")
            return self._refuse(hyp, hyp.issuer, "", "issuer_wide", why, now)
        if hyp.scope == "ROUTE_ISSUER":
            if hyp.issuer == ANY or hyp.route == ANY:
                why = "a route/issuer hypothesis must name both the route and the issuer"
                return self._refuse(hyp, hyp.issuer, "", "malformed_hypothesis", why, now)
            return self._consider(hyp, hyp.issuer, now)
        if hyp.scope == "ROUTE_WIDE":
            return [a for issuer in self._route_issuers(hyp.route)
                    for a in self._consider(hyp, issuer, now)]
        why = f"scope {hyp.scope} is not one the Pilot knows how to act on"
        return self._refuse(hyp, hyp.issuer, "", "unknown_scope", why, now)

    def _route_issuers(self, route: str) -> list[str]:
        """Issuers with traffic on a route, busiest first, so capacity goes where it helps most."""
        issuers = [i for i, w in self._baseline.items() if w.get(route, 0.0) > _EPS]
        return sorted(issuers,
                      key=lambda i: (-self._cell(route, i)["n"], -self._baseline[i][route], i))

    def _consider(self, hyp: _Hyp, issuer: str, now: int) -> list[Action]:
        """Run the guardrails for moving ``issuer`` off ``hyp.route``; start a probe if all pass."""
        cfg, route = self.config, hyp.route
        running = [dict(self._store[f"exp:{e}"]) for e in self.active_experiments()]
        if any(e["issuer"] == issuer and e["from"] == route for e in running):
            return []  # already experimenting on this cell; updates only refresh the hypothesis
        if hyp.confidence < cfg.min_confidence:
            why = f"confidence {hyp.confidence:.3f} is below the minimum {cfg.min_confidence:.3f}"
            return self._refuse(hyp, issuer, "", "min_confidence", why, now)
        if issuer not in self._baseline or route not in self._routes:
            why = f"no baseline policy covers issuer {issuer} on route {route}"
            return self._refuse(hyp, issuer, "", "unknown_cell", why, now)
        if self._cap(issuer, route) <= _EPS:
            why = (f"{route} carries {self._baseline[issuer].get(route, 0.0):.3f} of {issuer}'s "
                   f"traffic; keeping {cfg.control_share:.3f} as control leaves nothing to move")
            return self._refuse(hyp, issuer, "", "nothing_to_move", why, now)
        wide = self._store.get(f"hyp:{cell_key(ANY, issuer)}")
        if wide is not None:
            why = f"issuer-wide hypothesis {wide['id']} is open for {issuer}: rerouting cannot help"
            return self._refuse(hyp, issuer, "", "issuer_wide", why, now)
        until = self._store.get(f"cooldown:{cell_key(route, issuer)}", 0)
        if now < until:
            why = (f"{route}/{issuer} is cooling down after its last experiment until "
                   f"{from_millis(until).isoformat()}")
            return self._refuse(hyp, issuer, "", "cooldown", why, now)
        if any(e["issuer"] == issuer for e in running):
            why = f"{issuer} already has an experiment running; one per issuer at a time"
            return self._refuse(hyp, issuer, "", "one_experiment_per_issuer", why, now)
        if len(running) >= cfg.max_concurrent_experiments:
            why = (f"{len(running)} experiments already running "
                   f"(max {cfg.max_concurrent_experiments})")
            return self._refuse(hyp, issuer, "", "max_concurrent_experiments", why, now)
        target, rejected = self._best_alternative(issuer, route, hyp)
        if target is None:
            why = "no healthy alternative route: " + ("; ".join(rejected) or "no other route")
            return self._refuse(hyp, issuer, "", "no_healthy_alternative", why, now)
        return self._start(hyp, issuer, target, now)

    def _refuse(self, hyp: _Hyp, issuer: str, to_route: str, rule: str, why: str,
                now: int) -> list[Action]:
        """Publish a refusal once per (hypothesis, issuer, rule), not on every update or tick."""
        refused = dict(self._store.get(f"refused:{hyp.id}", {}))
        if refused.get(issuer) == rule:
            return []
        refused[issuer] = rule
        self._store[f"refused:{hyp.id}"] = refused
        exp_id = self._next_id("ref")
        record = self._experiment_record(
            exp_id, hyp.id, "REFUSED", issuer, hyp.route, to_route, 0.0, rule, [], None,
            f"refused ({rule}): {why}", now)
        return [Action("experiment", exp_id, record)]

    # --- choosing and judging routes -----------------------------------------------------

    def _best_alternative(self, issuer: str, route: str, hyp: _Hyp) -> tuple[str | None, list[str]]:
        threshold = max(self.config.health_floor, hyp.baseline_rate - self.config.health_margin)
        scored: list[tuple[float, str]] = []
        rejected: list[str] = []
        for candidate in self._routes:
            if candidate == route:
                continue
            why = self._unhealthy(candidate, issuer, threshold, hyp.since_ms)
            if why is None:
                scored.append((self._score(candidate, issuer), candidate))
            else:
                rejected.append(f"{candidate} {why}")
        if not scored:
            return None, rejected
        scored.sort(key=lambda sc: (-sc[0], sc[1]))
        return scored[0][1], rejected

    def _unhealthy(self, route: str, issuer: str, threshold: float, since_ms: int) -> str | None:
        for cell in (cell_key(route, issuer), cell_key(route, ANY)):
            open_hyp = self._store.get(f"hyp:{cell}")
            if open_hyp is not None:
                return f"has open hypothesis {open_hyp['id']}"
        stats = self._cell(route, issuer)
        recent = [ok for t, ok in stats["recent"] if t >= since_ms]
        cfg = self.config
        if len(recent) >= cfg.health_min_obs:
            upper = _wilson_upper(sum(recent), len(recent), cfg.health_z)
            if upper < threshold:
                return (f"delivered {sum(recent)}/{len(recent)} since the degradation began "
                        f"(upper bound {upper:.3f} < {threshold:.3f})")
        if stats["n"] >= cfg.health_min_obs and stats["s"] / stats["n"] < threshold:
            return f"long-run delivered rate {stats['s'] / stats['n']:.3f} < {threshold:.3f}"
        if cfg.proof_min_obs <= 0:  # proof switched off (tests of other rules)
            return None
        if len(recent) < cfg.proof_min_obs:
            return (f"not yet proven healthy: {len(recent)} outcomes since the degradation began, "
                    f"{cfg.proof_min_obs} needed")
        lower = _wilson_lower(sum(recent) / len(recent), len(recent), cfg.health_z)
        if lower < cfg.proof_floor:
            return (f"not proven healthy: delivered {sum(recent)}/{len(recent)} since the "
                    f"degradation began (lower bound {lower:.3f} < {cfg.proof_floor:.3f})")
        return None

    def _score(self, route: str, issuer: str) -> float:
        """Learned delivered rate: decayed outcomes, a prior, and past experiments on the cell."""
        cfg, stats = self.config, self._cell(route, issuer)
        track = self._store.get(f"track:{cell_key(route, issuer)}", {"wins": 0, "losses": 0})
        wins = cfg.experience_weight * track["wins"]
        losses = cfg.experience_weight * track["losses"]
        num = stats["s"] + cfg.prior_rate * cfg.prior_weight + wins
        return float(num / (stats["n"] + cfg.prior_weight + wins + losses))

    def _cell(self, route: str, issuer: str) -> dict[str, Any]:
        return dict(self._store.get(f"cell:{cell_key(route, issuer)}",
                                    {"s": 0.0, "n": 0.0, "t": 0, "recent": []}))

    def _learn(self, outcome: Outcome) -> None:
        stats = self._cell(outcome.route, outcome.issuer_id)
        half_life_ms = self.config.stats_half_life_s * 1000
        decay = 0.5 ** (max(0, outcome.event_ms - stats["t"]) / half_life_ms) if half_life_ms else 0
        ok = int(outcome.delivered)
        stats["s"], stats["n"] = stats["s"] * decay + ok, stats["n"] * decay + 1
        stats["t"] = max(stats["t"], outcome.event_ms)
        stats["recent"] = [*stats["recent"], [outcome.event_ms, ok]][-self.config.recent_size:]
        self._store[f"cell:{outcome.cell}"] = stats

    # --- experiments ----------------------------------------------------------------------

    def _cap(self, issuer: str, route: str) -> float:
        """Most of the issuer's traffic that may ever sit off ``route`` at once."""
        base = self._baseline.get(issuer, {}).get(route, 0.0)
        return max(0.0, min(self.config.max_total_shift, base - self.config.control_share))

    def _start(self, hyp: _Hyp, issuer: str, target: str, now: int) -> list[Action]:
        exp_id = self._next_id("exp")
        moved = min(self.config.probe_share, self._cap(issuer, hyp.route))
        exp: dict[str, Any] = {
            "id": exp_id, "hyp": hyp.id, "confidence": hyp.confidence, "issuer": issuer,
            "from": hyp.route, "to": target, "baseline_rate": hyp.baseline_rate,
            "started": now, "last_move": now, "last_test": now, "last_decision": now,
            "last_report": now,
            "moved": moved, "expanded": False, "capped": False,
            "cn": 0, "cs": 0, "pn": 0, "ps": 0, "wn": 0, "ws": 0, "pn_at_move": 0,
            "reported": [0, 0],
        }
        self._store[f"exp:{exp_id}"] = exp
        self._store["active"] = [*self.active_experiments(), exp_id]
        refused = dict(self._store.get(f"refused:{hyp.id}", {}))
        if refused.pop(issuer, None) is not None:  # a later refusal must be said again
            self._store[f"refused:{hyp.id}"] = refused
        reason = (f"hypothesis {hyp.id} (confidence {hyp.confidence:.3f}) suspects {hyp.route} "
                  f"for {issuer}; probing: {moved:.3f} of its traffic moves to {target}, the "
                  f"healthy alternative with the best learned delivered rate "
                  f"({self._score(target, issuer):.3f})")
        return self._publish(exp, "STARTED", None, reason, now, policy=True)

    def _advance(self, exp: dict[str, Any], now: int) -> list[Action]:
        """Take whatever step the evidence and the clock call for, at most one per call."""
        cfg = self.config
        age_s = (now - exp["started"]) / 1000
        if age_s >= cfg.max_experiment_s:
            why = f"experiment reached its {cfg.max_experiment_s:.0f} s limit; back to baseline"
            return self._end(exp, "CONCLUDED", None, why, now)
        if not exp["expanded"] and age_s >= cfg.max_probe_s:
            why = (f"inconclusive: no evidence the probe beats the control within "
                   f"{cfg.max_probe_s:.0f} s; back to baseline")
            return self._end(exp, "CONCLUDED", None, why, now)
        if exp["wn"] >= cfg.restore_window:
            recovered = self._check_recovery(exp, now)
            if recovered is not None:
                return recovered
        decision = self._decide(exp, now)
        if decision is not None:
            return decision
        if (now - exp["last_report"]) >= cfg.observe_interval_s * 1000 and \
                exp["reported"] != [exp["pn"], exp["cn"]]:
            why = "periodic observation of both arms"
            return self._publish(exp, "OBSERVATION", self._statistic(exp), why, now)
        return []

    def _check_recovery(self, exp: dict[str, Any], now: int) -> list[Action] | None:
        n, rate = exp["wn"], exp["ws"] / exp["wn"]
        lower = _wilson_lower(rate, n, self.config.restore_z)
        needed = exp["baseline_rate"] - self.config.restore_tolerance
        if lower >= needed:
            why = (f"control arm {exp['from']} delivered {exp['ws']}/{n} ({rate:.3f}, 99% lower "
                   f"bound {lower:.3f}) over its last window, back near its baseline "
                   f"{exp['baseline_rate']:.3f}; traffic goes back to the baseline weights")
            return self._end(exp, "RESTORED", None, why, now)
        exp["wn"], exp["ws"] = 0, 0
        self._store[f"exp:{exp['id']}"] = exp
        return None

    def _decide(self, exp: dict[str, Any], now: int) -> list[Action] | None:
        cfg = self.config
        since_decision = now - exp["last_decision"]
        ready = exp["pn"] >= cfg.min_obs_per_arm and exp["cn"] >= cfg.min_obs_per_arm
        if not ready:
            if since_decision >= cfg.hold_interval_s * 1000 and not exp["capped"]:
                why = (f"not enough evidence yet: {exp['pn']} probe and {exp['cn']} control "
                       f"outcomes, {cfg.min_obs_per_arm} needed on each")
                return self._publish(exp, "HELD", None, why, now, decision=True)
            return None
        if now - exp["last_move"] < cfg.expand_interval_s * 1000 or \
                now - exp["last_test"] < cfg.test_interval_s * 1000:
            return None
        exp["last_test"] = now
        self._store[f"exp:{exp['id']}"] = exp
        p = self._statistic(exp)
        assert p is not None
        if p <= cfg.beta:
            why = (f"probe {exp['to']} is worse: P(probe better) = {p:.4f} <= {cfg.beta}; "
                   "moved traffic goes back to the baseline weights")
            return self._end(exp, "ROLLED_BACK", None, why, now, statistic=p)
        if p >= 1 - cfg.alpha:
            blocker = self._expand_blocker(exp, now)
            if blocker is None:
                return self._expand(exp, p, now)
            if blocker == "at_cap":
                if exp["capped"]:
                    return None
                exp["capped"] = True
                why = (f"probe better (P = {p:.4f}) and the shift is at its cap "
                       f"({exp['moved']:.3f}); holding until {exp['from']} recovers")
                return self._publish(exp, "HELD", p, why, now, decision=True)
            if since_decision >= cfg.hold_interval_s * 1000:
                return self._publish(exp, "HELD", p, f"probe better (P = {p:.4f}) but {blocker}",
                                     now, decision=True)
            return None
        if since_decision >= cfg.hold_interval_s * 1000 and not exp["capped"]:
            why = (f"not enough evidence yet: P(probe better) = {p:.4f}, between "
                   f"{cfg.beta} and {1 - cfg.alpha}")
            return self._publish(exp, "HELD", p, why, now, decision=True)
        return None

    def _expand_blocker(self, exp: dict[str, Any], now: int) -> str | None:
        cfg, issuer = self.config, exp["issuer"]
        if exp["moved"] >= self._cap(issuer, exp["from"]) - _EPS:
            return "at_cap"
        if exp["confidence"] < cfg.min_confidence:
            return f"the hypothesis confidence fell to {exp['confidence']:.3f}"
        if self._store.get(f"hyp:{cell_key(ANY, issuer)}") is not None:
            return f"an issuer-wide hypothesis is open for {issuer}"
        if now < self._store.get(f"cooldown:{cell_key(exp['from'], issuer)}", 0):
            return "the cell is cooling down"
        if exp["pn"] - exp["pn_at_move"] < cfg.min_new_probe_obs:
            return f"waiting for {cfg.min_new_probe_obs} probe outcomes at the current share"
        return None

    def _expand(self, exp: dict[str, Any], p: float, now: int) -> list[Action]:
        cap = self._cap(exp["issuer"], exp["from"])
        before = exp["moved"]
        exp["moved"] = min(before + self.config.max_step_shift, cap)
        exp["expanded"], exp["last_move"], exp["pn_at_move"] = True, now, exp["pn"]
        why = (f"probe {exp['to']} is better: P(probe better) = {p:.4f} >= "
               f"{1 - self.config.alpha:.4f}; moved share {before:.3f} -> {exp['moved']:.3f}")
        return self._publish(exp, "EXPANDED", p, why, now, policy=True, decision=True)

    def _end(self, exp: dict[str, Any], step: str, rule: str | None, why: str, now: int,
             statistic: float | None = None) -> list[Action]:
        """Close an experiment: baseline weights back in force, cooldown set, lesson recorded."""
        issuer, cell = exp["issuer"], cell_key(exp["from"], exp["issuer"])
        exp["moved"] = 0.0
        self._store["active"] = [e for e in self.active_experiments() if e != exp["id"]]
        self._store[f"cooldown:{cell}"] = now + int(self.config.cooldown_s * 1000)
        if step in ("ROLLED_BACK", "RESTORED"):
            key = f"track:{cell_key(exp['to'], issuer)}"
            track = dict(self._store.get(key, {"wins": 0, "losses": 0}))
            if step == "ROLLED_BACK":
                track["losses"] += 1
            elif exp["expanded"]:  # restored after the probe proved itself: the move helped
                track["wins"] += 1
            self._store[key] = track
        stat = statistic if statistic is not None else self._statistic(exp)
        actions = self._publish(exp, step, stat, why, now, policy=True, rule=rule, keep=False)
        self._store.pop(f"exp:{exp['id']}", None)
        return actions

    def _statistic(self, exp: Mapping[str, Any]) -> float | None:
        if min(exp["pn"], exp["cn"]) < self.config.min_obs_per_arm:
            return None
        return prob_probe_better((exp["pn"], exp["ps"]), (exp["cn"], exp["cs"]))

    # --- records ------------------------------------------------------------------------

    def _publish(self, exp: dict[str, Any], step: str, statistic: float | None, why: str,
                 now: int, *, policy: bool = False, decision: bool = False,
                 rule: str | None = None, keep: bool = True) -> list[Action]:
        issuer = exp["issuer"]
        actions: list[Action] = []
        weights = self._weights(issuer, exp["from"], exp["to"], exp["moved"])
        if policy:
            actions.append(self._policy_action(issuer, weights, f"{step.lower()}: {why}",
                                               exp["id"], now))
        arms = [self._arm(exp["from"], exp["cn"], exp["cs"]),
                self._arm(exp["to"], exp["pn"], exp["ps"])]
        share = weights.get(exp["to"], 0.0)
        record = self._experiment_record(exp["id"], exp["hyp"], step, issuer, exp["from"],
                                         exp["to"], share, rule, arms, statistic, why, now)
        actions.insert(0, Action("experiment", exp["id"], record))
        exp["last_report"], exp["reported"] = now, [exp["pn"], exp["cn"]]
        if decision:
            exp["last_decision"] = now
        if keep:
            self._store[f"exp:{exp['id']}"] = exp
        return actions

    def _policy_action(self, issuer: str, weights: dict[str, float], reason: str,
                       exp_id: str, now: int) -> Action:
        version = self.version(issuer) + 1
        self._store[f"policy:{issuer}"] = {"version": version, "weights": weights}
        record = {
            "issuer_id": issuer, "version": version,
            "weights": [{"route": r, "weight": w} for r, w in sorted(weights.items())],
            "reason": reason, "experiment_id": exp_id, "updated_at": from_millis(now),
        }
        return Action("policy", issuer, record)

    @staticmethod
    def _arm(route: str, n: int, s: int) -> dict[str, Any]:
        return {"route": route, "attempts": n, "successes": s, "rate": s / n if n else 0.0}

    @staticmethod
    def _experiment_record(exp_id: str, hyp_id: str, step: str, issuer: str, from_route: str,
                           to_route: str, share: float, rule: str | None,
                           arms: Iterable[dict[str, Any]], statistic: float | None, reason: str,
                           now: int) -> dict[str, Any]:
        return {
            "experiment_id": exp_id, "hypothesis_id": hyp_id, "step": step, "issuer_id": issuer,
            "from_route": from_route, "to_route": to_route, "share": float(share),
            "guardrail": rule, "arms": list(arms), "statistic": statistic, "reason": reason,
            "at": from_millis(now),
        }

    def _weights(self, issuer: str, from_route: str, to_route: str,
                 moved: float) -> dict[str, float]:
        weights = self._full_baseline(issuer)
        if moved > 0:
            weights[from_route] = max(0.0, weights[from_route] - moved)
            weights[to_route] = weights.get(to_route, 0.0) + moved
        return weights

    def _full_baseline(self, issuer: str) -> dict[str, float]:
        base = self._baseline.get(issuer, {})
        return {r: base.get(r, 0.0) for r in self._routes} if base else {}

    def _next_id(self, prefix: str) -> str:
        seq = int(self._store.get("seq", 0)) + 1
        self._store["seq"] = seq
        return f"{prefix}-{seq:06d}"

    def _tick_clock(self, now_ms: int) -> int:
        """Event time never runs backwards here, so a late record cannot reopen a cooldown."""
        clock = max(int(self._store.get("clock", now_ms)), int(now_ms))
        self._store["clock"] = clock
        return clock
