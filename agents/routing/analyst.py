"""The Analyst: turns authorization outcomes into hypotheses about degraded cells. It never acts.

It has no producer, no routing policy and no Kafka or Faust import: :meth:`Analyst.observe` only
returns hypothesis records (schemas/hypothesis.avsc) for the caller to publish, and the Pilot
decides what, if anything, to do about them.

Detection (per (route, issuer) cell, in event time)
    Route failures (SOFT_DECLINE, ERROR, TIMEOUT; issuer declines are delivered attempts) feed a
    bank of Bernoulli CUSUMs, one per design drop: success falling from the cell's baseline p0 to
    p1 = p0 * d / 0.92 for d in ``design_success`` (0.80, 0.70, 0.50 at the reference p0 = 0.92).
    A CUSUM tuned to p1 is minimax-optimal for that drop (Moustakides 1986); the bank keeps the
    delay near ln(ARL) / KL(p1 || p0) for each of them (the limit `rakshit bench healing` checks,
    README "Self-healing routing"). Two more Bernoulli CUSUMs watch the share of soft declines
    (cause SOFT_DECLINE_SURGE) and the share of attempts slower than the baseline p95 latency
    (cause LATENCY_SPIKE).

Thresholds
    Each CUSUM uses its exact log-likelihood ratio, for which Lorden (1971) gives E0[T] >= e**h in
    attempts. So h = ln(N) with N = rate * 30 days / ``false_alarms_per_cell_month`` (the ARL in
    attempts) times the number of detectors in a cell times ``cells`` (K): the union bound splits
    the budget across the bank and, when K > 1, holds all K cells together to the per-cell rate,
    adding ln K. The bound is conservative (the true ARL is larger by the reflection and overshoot
    factors Siegmund's correction would credit); we keep it because it needs no per-cell numerical
    calibration and its guarantee does not depend on p0.
    The attempt rate is estimated per cell from event time (attempts per 10 s block, smoothed,
    the larger of the smoothed and the latest block, because overestimating it only raises h),
    unless ``attempt_rate_per_s`` fixes it in the config. Before a cell's first block closes,
    ``prior_rate_per_s`` (200/s, the top of the target table) is used: conservative again.

Baselines
    p0 (and the soft-decline share and the latency distribution) are learned per cell from its own
    history: counts started from a prior (0.92 success worth ``prior_strength`` attempts), halved
    whenever they pass ``baseline_memory`` so the baseline follows slow drift, and frozen while the
    cell is in alarm so an outage cannot teach the detector that it is normal. The failure rate
    plugged into the likelihood ratio is the estimate plus ``baseline_margin_sd`` standard errors:
    an uncertain young baseline leans towards fewer false alarms, a mature one costs nothing.
    Detectors arm once the baseline is worth ``min_baseline_attempts``; parameters are refreshed
    when a rate block closes, not per attempt, to keep observe() cheap.

Scope, cause, confidence, resolution
    See :meth:`Analyst._scope_for`, :meth:`Analyst._alarm` and :meth:`Analyst._recover`. A cell's
    change point is its CUSUM's last zero: ``since`` is the event time of the first attempt after
    it, and the evidence counts the attempts from there to the alarm. ``hypothesis_id`` is derived
    from the first alarming cell and that ``since``, so it is the same on every OPEN, UPDATED and
    RESOLVED record of the episode and reproducible from the same input.

State: per-cell state lives in ``store`` (plain JSON, a Faust table works); the index of open
hypotheses and of which routes carry which issuers lives in memory and is rebuilt from cell states
as cells are seen again. Scope needs every route of an issuer (and every issuer of a route) in one
Analyst, so the stream layer must not split those across workers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from agents.routing import route_health
from agents.routing.outcomes import ROUTE_FAILURES, Outcome, cell_key, split_cell
from schemas.clock import from_millis

__all__ = ["HYPOTHESIS_FIELDS", "Analyst", "AnalystConfig", "bernoulli_kl", "beta_cdf"]

HYPOTHESIS_FIELDS = ("hypothesis_id", "status", "route", "issuer_id", "scope", "suspected_cause",
                     "confidence", "confidence_meaning", "evidence", "since", "created_at")
MONTH_S = 30 * 86_400

FAIL, SOFT, LAT = "fail", "soft", "lat"
_PRIORITY = {FAIL: 3, SOFT: 2, LAT: 1}
_MEANING = {
    FAIL: ("Posterior probability (Jeffreys Beta prior, attempts since the estimated change point) "
           "that the cell's success rate is below the midpoint between its baseline and the "
           "mildest design drop. The window was chosen by the detector, so it reads high."),
    SOFT: ("Posterior probability (Jeffreys Beta prior, attempts since the estimated change point) "
           "that the soft-decline share exceeds the midpoint between its baseline and the design "
           "surge. The window was chosen by the detector, so it reads high."),
    LAT: ("Posterior probability (Jeffreys Beta prior, attempts since the estimated change point) "
          "that the share of attempts slower than the baseline p95 exceeds the midpoint between "
          "its baseline and the design spike. The window was chosen by the detector, so it reads "
          "high."),
}
_RESOLVED_MEANING = ("Posterior probability (Jeffreys Beta prior, attempts since the recovery "
                     "test's last zero) that the rate is back on the baseline side of the midpoint "
                     "between the degraded and baseline rates.")


@dataclass(frozen=True)
class AnalystConfig:
    false_alarms_per_cell_month: float = 1.0
    cells: int = 1  # K: cells held together to the per-cell rate (adds ln K to thresholds)
    month_s: float = MONTH_S
    attempt_rate_per_s: float | None = None  # None: estimated per cell from event time
    prior_rate_per_s: float = 200.0  # until a cell's first rate block closes
    rate_block_s: float = 10.0
    rate_smoothing: float = 0.2
    prior_success: float = 0.92
    prior_strength: float = 500.0  # attempts the prior is worth; large when p0 is known
    prior_soft_share: float = 0.03
    min_baseline_attempts: float = 1000.0
    baseline_memory: float = 200_000.0
    baseline_margin_sd: float = 1.0
    reference_success: float = 0.92
    design_success: tuple[float, ...] = (0.80, 0.70, 0.50)
    # Lorden's bound undershoots each design's true ARL by at least this factor, rounded down from
    # what `python -m agents.routing.calibration` simulates at p0 = 0.92 (tests/test_calibration.py
    # checks it; README "Self-healing routing"): h = ln(N / A).
    arl_factors: tuple[float, ...] = (25.0, 11.0, 5.0)
    soft_shift: float = 0.10  # design surge: soft-decline share up by this much
    latency_quantile: float = 0.95
    latency_shift: float = 0.25  # design spike: share slower than baseline p95 up by this much
    min_latency_samples: float = 500.0
    recovery_arl: float = 2000.0  # attempts; h of the reverse CUSUM that declares recovery
    soft_cause_share: float = 0.6  # soft declines' part of the extra failures for SOFT cause
    scope_window_s: float = 120.0
    active_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.false_alarms_per_cell_month <= 0 or self.cells < 1:
            raise ValueError("false_alarms_per_cell_month must be > 0 and cells >= 1")
        if not self.design_success or not all(
                0.0 < d < self.reference_success for d in self.design_success):
            raise ValueError("design_success must be non-empty and below reference_success")
        if len(self.arl_factors) != len(self.design_success) or min(self.arl_factors) < 1.0:
            raise ValueError("arl_factors needs one factor >= 1 per design_success")

    @property
    def detectors(self) -> int:
        return len(self.design_success) + 2

    def threshold(self, rate_per_s: float) -> float:
        """h = ln of the per-detector ARL in attempts (Lorden: E0[T] >= e**h)."""
        arl = max(rate_per_s, 1e-6) * self.month_s / self.false_alarms_per_cell_month
        return math.log(max(arl * self.detectors * self.cells, math.e))


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) in nats."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (alarm time only)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - beta_cdf(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return min(1.0, max(0.0, front * f))


def _p_above(hits: float, n: float, level: float) -> float:
    """P(rate > level) under the Jeffreys posterior Beta(hits + 1/2, n - hits + 1/2)."""
    return 1.0 - beta_cdf(level, hits + 0.5, n - hits + 0.5)


# -- per-cell state ---------------------------------------------------------------------------
# det: per detector [S, n, hits, other, t0]; failure bank: hits = failures, other = soft declines;
# soft detector: hits = soft declines, other = failures; latency: hits = slow, other = failures.
# par: per detector [llr if hit, llr if not, h, baseline rate, design rate].
_D = 5
_RECENT = 64


def _recent_p95(recent: list[Any], n: int) -> float | None:
    """p95 of the last min(n, _RECENT) latencies (nearest rank)."""
    k = min(n, _RECENT)
    if k <= 0:
        return None
    nxt = recent[0]
    values = sorted(recent[1 + (nxt - 1 - i) % _RECENT] for i in range(k))
    return float(values[min(k - 1, math.ceil(0.95 * k) - 1)])


def _new_cell(cfg: AnalystConfig, ms: int) -> dict[str, Any]:
    m = cfg.detectors
    n0 = cfg.prior_strength
    return {
        "health": route_health.new_state(),
        "base": [n0, n0 * (1 - cfg.prior_success), n0 * cfg.prior_soft_share],
        "lat_hist": [0.0] * route_health.LATENCY_BINS,
        "lat_bin": -1,  # slow means latency bin > lat_bin; -1 while unarmed
        "armed": False,
        "det": [0.0] * (_D * m),
        "par": [0.0] * (_D * m),
        "rate": [ms, 0, -1.0, -1.0],  # block start, attempts in block, smoothed, last block
        "alarm": None,
        "recent": [0] + [0.0] * _RECENT,  # next slot, then the last latencies (ring)
    }


def _upper(rate: float, n: float, z: float) -> float:
    """The rate plus z standard errors: a young baseline errs towards fewer false alarms."""
    return rate + z * math.sqrt(max(rate * (1 - rate), 1e-4) / n)


def _cusum_params(hit_p0: float, hit_p1: float, h: float) -> list[float]:
    return [math.log(hit_p1 / hit_p0), math.log((1 - hit_p1) / (1 - hit_p0)), h, hit_p0, hit_p1]


def _step(det: list[Any], o: int, inc: float, hit: int, other: int, ms: int) -> float:
    """One CUSUM step; the excursion counters restart when the statistic leaves zero."""
    s: float = det[o] + inc
    if s <= 0.0:
        det[o] = 0.0
        return 0.0
    if det[o] == 0.0:
        det[o + 1] = det[o + 2] = det[o + 3] = 0
        det[o + 4] = ms
    det[o] = s
    det[o + 1] += 1
    det[o + 2] += hit
    det[o + 3] += other
    return s


@dataclass
class _Hyp:
    hid: str
    scope: str
    route: str
    issuer_id: str
    since_ms: int
    members: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)


class Analyst:
    """Statistically principled change detection per (route, issuer) cell; see the module doc."""

    def __init__(self, config: AnalystConfig | None = None,
                 store: MutableMapping[str, dict[str, Any]] | None = None) -> None:
        self.config = config or AnalystConfig()
        self.store: MutableMapping[str, dict[str, Any]] = {} if store is None else store
        self._hyps: dict[str, _Hyp] = {}
        self._routes_of: dict[str, dict[str, int]] = {}  # issuer -> route -> last event ms
        self._issuers_of: dict[str, dict[str, int]] = {}  # route -> issuer -> last event ms
        cfg = self.config
        self._design_ratio = [d / cfg.reference_success for d in cfg.design_success]
        self._mildest = max(self._design_ratio)

    # -- public API ---------------------------------------------------------------------------

    def observe(self, outcome: Outcome) -> list[dict[str, Any]]:
        """Update the outcome's cell; returns the hypothesis records to publish now (usually [])."""
        key = outcome.cell
        ms = outcome.event_ms
        st = self.store.get(key)
        if st is None:
            st = _new_cell(self.config, ms)
            self._touch(outcome.route, outcome.issuer_id, ms)
            self._refresh(st, ms)
        route_health.observe(st["health"], outcome)
        recent = st["recent"]
        recent[recent[0] + 1] = outcome.latency_ms
        recent[0] = (recent[0] + 1) % _RECENT
        if not outcome.counts_for_route:
            self.store[key] = st
            return []
        rate = st["rate"]
        if ms - rate[0] >= self.config.rate_block_s * 1000:
            self._close_block(st, rate, ms)
            self._touch(outcome.route, outcome.issuer_id, ms)
        rate[1] += 1
        result = outcome.result
        x = 1 if result in ROUTE_FAILURES else 0
        sd = 1 if result == "SOFT_DECLINE" else 0
        lat_bin = st["lat_bin"]
        lb = route_health.latency_bin(outcome.latency_ms)
        y = 1 if 0 <= lat_bin < lb else 0
        alarm = st["alarm"]
        records: list[dict[str, Any]] = []
        if alarm is None:
            base = st["base"]
            base[0] += 1
            base[1] += x
            base[2] += sd
            st["lat_hist"][lb] += 1
        if st["armed"]:
            fired = self._detect(st, alarm, x, sd, y, lat_bin, ms)
            if fired is not None:
                records += self._alarm(key, st, fired, ms)
            elif alarm is not None and self._recover(alarm, x, sd, y, ms):
                records += self._resolve(key, st, ms)
        self.store[key] = st
        return records

    def open_hypotheses(self) -> list[dict[str, Any]]:
        """The latest record of every open hypothesis, oldest first."""
        return [dict(h.record) for h in sorted(self._hyps.values(), key=lambda h: h.since_ms)]

    def cell_summary(self, route: str, issuer_id: str, now_ms: int) -> dict[str, Any]:
        """Route-health windows (1 min, 5 min, 1 h) and detector state, for dashboards."""
        st = self.store.get(cell_key(route, issuer_id))
        health = None if st is None else st["health"]
        out: dict[str, Any] = {
            "route": route, "issuer_id": issuer_id,
            "windows": {f"{w}s": route_health.summary(health, now_ms, w) for w in (60, 300, 3600)},
        }
        if st is not None:
            m = len(self._design_ratio)
            det, par = st["det"], st["par"]
            out.update(
                armed=st["armed"], in_alarm=st["alarm"] is not None,
                hypothesis_id=None if st["alarm"] is None else st["alarm"]["hid"],
                baseline_success=1 - st["base"][1] / st["base"][0],
                attempt_rate_per_s=self._rate(st["rate"]),
                statistics=[det[_D * j] for j in range(m + 2)],
                thresholds=[par[_D * j + 2] for j in range(m + 2)],
            )
        return out

    # -- detection ----------------------------------------------------------------------------

    def _detect(self, st: dict[str, Any], alarm: dict[str, Any] | None, x: int, sd: int, y: int,
                lat_bin: int, ms: int) -> tuple[str, int] | None:
        """Advance every detector not already fired in this episode; the first crossing wins."""
        det, par = st["det"], st["par"]
        kinds = {} if alarm is None else alarm["kinds"]
        m = len(self._design_ratio)
        fired: tuple[str, int] | None = None
        if FAIL not in kinds:
            for j in range(m):
                o = _D * j
                s = _step(det, o, par[o] if x else par[o + 1], x, sd, ms)
                if s >= par[o + 2] and fired is None:
                    fired = (FAIL, o)
        o = _D * m
        if SOFT not in kinds:
            s = _step(det, o, par[o] if sd else par[o + 1], sd, x, ms)
            if s >= par[o + 2] and fired is None:
                fired = (SOFT, o)
        o += _D
        if LAT not in kinds and lat_bin >= 0:
            s = _step(det, o, par[o] if y else par[o + 1], y, x, ms)
            if s >= par[o + 2] and fired is None:
                fired = (LAT, o)
        return fired

    def _rate(self, rate: list[Any]) -> float:
        if self.config.attempt_rate_per_s is not None:
            return self.config.attempt_rate_per_s
        if rate[2] < 0:
            return self.config.prior_rate_per_s
        return float(max(rate[2], rate[3]))

    def _close_block(self, st: dict[str, Any], rate: list[Any], ms: int) -> None:
        block = rate[1] / ((ms - rate[0]) / 1000)
        rate[2] = block if rate[2] < 0 else rate[2] + self.config.rate_smoothing * (block - rate[2])
        rate[3] = block
        rate[0], rate[1] = ms, 0
        self._refresh(st, ms)

    def _refresh(self, st: dict[str, Any], ms: int) -> None:
        """Recompute thresholds (rate) and, outside alarms, the baselines behind each CUSUM."""
        cfg = self.config
        h = cfg.threshold(self._rate(st["rate"]))
        par, m = st["par"], len(self._design_ratio)
        if st["alarm"] is not None:  # baselines frozen; only h follows the rate
            for j in range(m + 2):
                par[_D * j + 2] = self._h(h, j)
            return
        base = st["base"]
        if base[0] > cfg.baseline_memory:
            base[:] = [v / 2 for v in base]
            st["lat_hist"] = [v / 2 for v in st["lat_hist"]]
        n = base[0]
        q0 = min(0.5, _upper(base[1] / n, n, cfg.baseline_margin_sd))
        for j, ratio in enumerate(self._design_ratio):
            par[_D * j:_D * j + _D] = _cusum_params(q0, 1 - (1 - q0) * ratio, self._h(h, j))
        s0 = min(0.5, max(1e-3, _upper(base[2] / n, n, cfg.baseline_margin_sd)))
        par[_D * m:_D * m + _D] = _cusum_params(s0, min(0.95, s0 + cfg.soft_shift), h)
        self._refresh_latency(st, h)
        st["armed"] = n >= cfg.min_baseline_attempts

    def _h(self, h: float, detector: int) -> float:
        """The failure detectors' thresholds carry their measured ARL factor; the soft-decline
        and latency detectors keep Lorden's h (their step sizes vary with learned baselines)."""
        factors = self.config.arl_factors
        return max(1.0, h - math.log(factors[detector])) if detector < len(factors) else h

    def _refresh_latency(self, st: dict[str, Any], h: float) -> None:
        cfg = self.config
        hist = st["lat_hist"]
        total = sum(hist)
        if total < cfg.min_latency_samples:
            st["lat_bin"] = -1
            return
        above, k = 0.0, len(hist) - 1
        while k > 0 and above + hist[k] <= (1 - cfg.latency_quantile) * total:
            above += hist[k]
            k -= 1
        l0 = max(above / total, 0.005)
        o = _D * (len(self._design_ratio) + 1)
        st["par"][o:o + _D] = _cusum_params(l0, min(0.95, l0 + cfg.latency_shift), h)
        st["lat_bin"] = k

    def _touch(self, route: str, issuer_id: str, ms: int) -> None:
        self._routes_of.setdefault(issuer_id, {})[route] = ms
        self._issuers_of.setdefault(route, {})[issuer_id] = ms

    # -- alarms -------------------------------------------------------------------------------

    def _alarm(self, key: str, st: dict[str, Any], fired: tuple[str, int],
               ms: int) -> list[dict[str, Any]]:
        """A detector crossed: classify the cause from what the excursion saw, then open, join or
        escalate a hypothesis. Soft declines are route failures too, so a failure alarm is a
        SOFT_DECLINE_SURGE when soft declines are, with posterior probability >= 0.9, more than
        ``soft_cause_share`` (and more than their baseline share) of the failures; a latency
        alarm whose failure rate is, with the same certainty, past the midpoint to the mildest
        design drop is a degraded route. The evidence's p95 is over the attempts since the
        change point (at most the last ``_RECENT``), not a clock window that would mostly hold
        the healthy past when detection is fast."""
        kind, o = fired
        det, par = st["det"], st["par"]
        m = len(self._design_ratio)
        n, hits, other, t0 = det[o + 1], det[o + 2], det[o + 3], int(det[o + 4])
        stat, h = det[o], par[o + 2]
        fails = hits if kind == FAIL else other
        softs = hits if kind == SOFT else other if kind == FAIL else 0
        q0, q1m = par[3], self._mildest_q(par[3])
        s0, s1 = par[_D * m + 3], par[_D * m + 4]
        kinds = {kind: self._recovery_spec(par[o + 3], hits / n)}
        if kind == FAIL:
            share = max(self.config.soft_cause_share, s0 / q0)
            if fails and _p_above(softs, fails, share) >= 0.9:
                kinds[SOFT] = self._recovery_spec(s0, softs / n)
                kind = SOFT
        elif kind == LAT and _p_above(fails, n, (q0 + q1m) / 2) >= 0.9:
            kinds[FAIL] = self._recovery_spec(q0, fails / n)
            kind = FAIL
        if kind == FAIL:
            confidence = 1.0 - _p_above(n - fails, n, 1 - (q0 + q1m) / 2)
        elif kind == SOFT:
            confidence = _p_above(softs, n, (s0 + s1) / 2)
        else:
            confidence = _p_above(hits, n, (par[o + 3] + par[o + 4]) / 2)
        for j in range(m + 2):  # the detectors behind this alarm start again from zero
            if (FAIL if j < m else SOFT if j == m else LAT) in kinds:
                det[_D * j] = 0.0
        p95 = _recent_p95(st["recent"], int(n))
        evidence = {"attempts": int(n), "successes": int(n - fails), "baseline_rate": 1 - q0,
                    "observed_rate": (n - fails) / n, "statistic": stat, "threshold": h,
                    "p95_latency_ms": p95}
        report = (confidence, _MEANING[kind], evidence)
        alarm = st["alarm"]
        if alarm is not None:  # escalation inside an open episode
            for k, spec in kinds.items():
                alarm["kinds"].setdefault(k, spec)
            self.store[key] = st
            hyp = self._hyp_of(key, alarm)
            if _PRIORITY[kind] <= _PRIORITY[alarm["cause"]] or hyp is None:
                return []
            alarm["cause"] = kind
            return [self._publish(hyp, "UPDATED", report, ms)]
        st["alarm"] = {"hid": "", "t": ms, "since": t0, "cause": kind, "kinds": kinds}
        self.store[key] = st
        return self._place(key, st, t0, report, ms)

    def _mildest_q(self, q0: float) -> float:
        return 1 - (1 - q0) * self._mildest

    def _recovery_spec(self, base: float, observed: float) -> list[float]:
        """[R, null rate, baseline rate, n, hits, failures, done]: the reverse CUSUM's state."""
        null = (base + max(observed, base)) / 2
        return [0.0, min(null, 0.99), base, 0, 0, 0, 0]

    def _recover(self, alarm: dict[str, Any], x: int, sd: int, y: int, ms: int) -> bool:
        """Reverse CUSUMs, null = midway between degraded and baseline rate, alternative =
        baseline, h = ln(recovery_arl): each fired kind must come back before the cell resolves."""
        h = math.log(self.config.recovery_arl)
        done = True
        for kind, spec in alarm["kinds"].items():
            if spec[6]:
                continue
            hit = x if kind == FAIL else sd if kind == SOFT else y
            null, base = spec[1], spec[2]
            inc = math.log(base / null) if hit else math.log((1 - base) / (1 - null))
            r = spec[0] + inc
            if r <= 0:
                spec[0] = 0.0
            else:
                if spec[0] == 0.0:
                    spec[3] = spec[4] = spec[5] = 0
                spec[0] = r
                spec[3] += 1
                spec[4] += hit
                spec[5] += x
                if r >= h:
                    spec[6] = 1
            done = done and bool(spec[6])
        return done

    # -- hypotheses ---------------------------------------------------------------------------

    def _hyp_of(self, key: str, alarm: dict[str, Any]) -> _Hyp | None:
        hyp = self._hyps.get(alarm["hid"])
        if hyp is None and alarm["hid"]:  # restarted: rebuild from the cell's own state
            route, issuer = split_cell(key)
            hyp = _Hyp(alarm["hid"], "ROUTE_ISSUER", route, issuer, int(alarm["since"]), {key})
            self._hyps[hyp.hid] = hyp
        return hyp

    def _co_alarming(self, cells: list[str], ms: int) -> bool:
        window = self.config.scope_window_s * 1000
        for c in cells:
            st = self.store.get(c)
            if st is None or st["alarm"] is None or ms - st["alarm"]["t"] > window:
                return False
        return True

    def _active(self, index: dict[str, int], ms: int) -> list[str]:
        return [k for k, seen in index.items() if ms - seen <= self.config.active_window_s * 1000]

    def _scope_for(self, key: str, ms: int) -> tuple[str, list[str]]:
        """ISSUER_WIDE when every route with recent traffic for the issuer (two or more) alarmed
        within ``scope_window_s``; ROUTE_WIDE likewise for every issuer on the route; issuer-wide
        wins a tie because it is the case where moving traffic cannot help."""
        route, issuer = split_cell(key)
        routes = self._active(self._routes_of.get(issuer, {}), ms)
        cells = [cell_key(r, issuer) for r in routes]
        if len(cells) >= 2 and self._co_alarming(cells, ms):
            return "ISSUER_WIDE", cells
        issuers = self._active(self._issuers_of.get(route, {}), ms)
        cells = [cell_key(route, i) for i in issuers]
        if len(cells) >= 2 and self._co_alarming(cells, ms):
            return "ROUTE_WIDE", cells
        return "ROUTE_ISSUER", [key]

    def _place(self, key: str, st: dict[str, Any], since: int,
               report: tuple[float, str, dict[str, Any]], ms: int) -> list[dict[str, Any]]:
        route, issuer = split_cell(key)
        self._touch(route, issuer, ms)
        for hyp in self._hyps.values():  # a wide hypothesis already covers this cell
            if (hyp.scope == "ISSUER_WIDE" and hyp.issuer_id == issuer) or (
                    hyp.scope == "ROUTE_WIDE" and hyp.route == route):
                hyp.members.add(key)
                st["alarm"]["hid"] = hyp.hid
                self.store[key] = st
                return [self._publish(hyp, "UPDATED", report, ms)]
        scope, cells = self._scope_for(key, ms)
        if scope == "ROUTE_ISSUER":
            hid = "hyp-" + hashlib.sha1(f"{key}|{since}".encode()).hexdigest()[:16]
            hyp = _Hyp(hid, scope, route, issuer, since, {key})
            self._hyps[hid] = hyp
            st["alarm"]["hid"] = hid
            self.store[key] = st
            return [self._publish(hyp, "OPEN", report, ms)]
        states = {c: (st if c == key else self.store[c]) for c in cells}
        olds = [h for c in cells if c != key
                for h in [self._hyp_of(c, states[c]["alarm"])] if h is not None]
        survivor = min(olds, key=lambda h: (h.since_ms, h.hid))
        survivor.scope = scope
        survivor.route = "*" if scope == "ISSUER_WIDE" else route
        survivor.issuer_id = "*" if scope == "ROUTE_WIDE" else issuer
        records: list[dict[str, Any]] = []
        for c, cst in states.items():
            old = self._hyp_of(c, cst["alarm"]) if c != key else None
            if old is not None and old is not survivor:
                records += self._remove(old, c, report, ms, superseded_by=survivor.hid)
            survivor.members.add(c)
            cst["alarm"]["hid"] = survivor.hid
            survivor.since_ms = min(survivor.since_ms, int(cst["alarm"]["since"]))
            self.store[c] = cst  # stores that hand out copies need the write back
        return [*records, self._publish(survivor, "UPDATED", report, ms)]

    def _remove(self, hyp: _Hyp, key: str, report: tuple[float, str, dict[str, Any]], ms: int,
                superseded_by: str | None = None) -> list[dict[str, Any]]:
        """Drop a cell from a hypothesis: RESOLVED when none is left, narrowed when one is."""
        hyp.members.discard(key)
        if not hyp.members:
            del self._hyps[hyp.hid]
            if superseded_by is not None:
                confidence, meaning, evidence = report
                report = (confidence, f"Superseded by {superseded_by} (wider scope). {meaning}",
                          evidence)
            return [self._publish(hyp, "RESOLVED", report, ms)]
        if len(hyp.members) == 1 and hyp.scope != "ROUTE_ISSUER":
            hyp.scope = "ROUTE_ISSUER"
            hyp.route, hyp.issuer_id = split_cell(next(iter(hyp.members)))
            return [self._publish(hyp, "UPDATED", report, ms)]
        return []

    def _resolve(self, key: str, st: dict[str, Any], ms: int) -> list[dict[str, Any]]:
        alarm = st["alarm"]
        kinds = alarm["kinds"]
        spec = kinds[alarm["cause"]]
        n, hits, fails = spec[3], spec[4], spec[5]
        confidence = 1.0 - _p_above(hits, n, spec[1]) if n else 0.0
        stat = spec[0]
        p95 = _recent_p95(st["recent"], int(n))
        base_ok = 1 - st["par"][3]
        evidence = {"attempts": int(n), "successes": int(n - fails), "baseline_rate": base_ok,
                    "observed_rate": (n - fails) / n if n else 0.0, "statistic": stat,
                    "threshold": math.log(self.config.recovery_arl), "p95_latency_ms": p95}
        hyp = self._hyp_of(key, alarm)
        st["alarm"] = None
        st["det"] = [0.0] * len(st["det"])
        if hyp is None:
            return []
        return self._remove(hyp, key, (confidence, _RESOLVED_MEANING, evidence), ms)

    def _publish(self, hyp: _Hyp, status: str, report: tuple[float, str, dict[str, Any]],
                 ms: int) -> dict[str, Any]:
        confidence, meaning, evidence = report
        cause = LAT
        for c in hyp.members:
            st = self.store.get(c)
            if st is not None and st["alarm"] is not None:
                cause = max(cause, st["alarm"]["cause"], key=_PRIORITY.__getitem__)
        if status == "RESOLVED" and hyp.record:
            suspected = hyp.record["suspected_cause"]
        elif cause == FAIL:
            suspected = "ISSUER_DOWN" if hyp.scope == "ISSUER_WIDE" else "ROUTE_DEGRADED"
        else:
            suspected = "SOFT_DECLINE_SURGE" if cause == SOFT else "LATENCY_SPIKE"
        hyp.record = {
            "hypothesis_id": hyp.hid, "status": status, "route": hyp.route,
            "issuer_id": hyp.issuer_id, "scope": hyp.scope, "suspected_cause": suspected,
            "confidence": float(min(1.0, max(0.0, confidence))), "confidence_meaning": meaning,
            "evidence": dict(evidence), "since": from_millis(hyp.since_ms),
            "created_at": from_millis(ms),
        }
        return dict(hyp.record)
