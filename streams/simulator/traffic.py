"""Turning a population and a scenario into transactions, authorization outcomes and labels.

Records are plain dicts shaped exactly like schemas/transaction.avsc and
schemas/authorization_outcome.avsc (Decimal money, tz-aware UTC datetimes), so the codec can encode
them without translation and tests can validate them against the schema directly.

Randomness is split into independent seeded streams (traffic, fraud, outcomes, labels) so that a
scenario that adds fraud does not reshuffle the genuine traffic around it, and so the same seed
and event times always reproduce the same records.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.clock import whole_millis
from streams.simulator.population import (
    COUNTRIES,
    COUNTRY_BY_CODE,
    Card,
    Channel,
    Customer,
    Merchant,
    Population,
    distance_km,
    opaque_id,
)
from streams.simulator.routing import RoutingTable
from streams.simulator.scenarios import (
    CAMPAIGN_SHAPES,
    CampaignShape,
    FraudKind,
    Outage,
    RouteCondition,
    Scenario,
    bind_outage,
    degraded_condition,
    get_scenario,
    healthy_condition,
)

CENT = Decimal("0.01")
DEFAULT_TIMEOUT_MS = 5000
# Issuers refuse a share of card-testing probes themselves (invalid CVV, blocked card).
_CARD_TESTING_DECLINE = 0.35
_FAR_KM = 2500.0


def from_posix(ts: float) -> datetime:
    """The UTC datetime of POSIX seconds, in whole milliseconds as timestamp-millis carries it."""
    return whole_millis(datetime.fromtimestamp(ts, UTC))


class EventClock:
    """Maps wall time to event time, accelerated by ``speedup``.

    Unless ``allow_future`` is set, event time is capped at the wall clock: the worker rejects
    records from the future, and a sped-up run that catches up with the present simply continues
    in real time.
    """

    def __init__(
        self,
        start: datetime,
        speedup: float = 1.0,
        *,
        wall_start: float | None = None,
        allow_future: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("event clock start must be timezone-aware")
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self._start_ts = start.timestamp()
        self.speedup = speedup
        self._wall = wall
        self._wall_start = wall() if wall_start is None else wall_start
        self.allow_future = allow_future

    @classmethod
    def for_run(
        cls,
        duration_s: float,
        speedup: float = 1.0,
        *,
        unbounded_lookback_s: float = 14 * 86400.0,
        wall: Callable[[], float] = time.time,
    ) -> EventClock:
        """A clock whose last event of a ``duration_s`` run lands at (not after) the present.

        For an unbounded run (``duration_s`` 0) with speedup, the run starts
        ``unbounded_lookback_s`` in the past and proceeds at real time once it catches up.
        """
        now = wall()
        if speedup <= 1.0:
            lookback = 0.0
        elif duration_s > 0:
            lookback = duration_s * (speedup - 1.0)
        else:
            lookback = unbounded_lookback_s
        return cls(from_posix(now - lookback), speedup, wall_start=now, wall=wall)

    @property
    def start(self) -> datetime:
        return from_posix(self._start_ts)

    def at_wall(self, wall_ts: float) -> datetime:
        return from_posix(self.posix_at_wall(wall_ts))

    def posix_at_wall(self, wall_ts: float) -> float:
        event = self._start_ts + (wall_ts - self._wall_start) * self.speedup
        return event if self.allow_future else min(event, wall_ts)

    def now(self) -> datetime:
        return self.at_wall(self._wall())


@dataclass(frozen=True)
class Generated:
    transaction: dict[str, Any]
    outcome: dict[str, Any]
    fraud_scenario: str | None  # ground truth: None for genuine


@dataclass(frozen=True)
class _Planned:
    """A fraudulent transaction scheduled by a campaign, waiting for its event time."""

    kind: FraudKind
    customer: Customer
    card: Card
    merchant: Merchant
    terminal_id: str
    amount: float
    device_id: str | None
    geo: tuple[float, float] | None


class TrafficGenerator:
    """Produces one transaction (and its outcome) per call, plus FRAUD labels as they come due.

    Fraud campaigns are scheduled in event time; a due fraudulent transaction takes the place of
    the next genuine one, so the rate limiter upstream still governs the total and the stream stays
    in event-time order.
    """

    def __init__(
        self,
        population: Population,
        scenario: Scenario | str,
        seed: int,
        clock: EventClock,
        *,
        routing: RoutingTable | None = None,
        label_delay_days: tuple[float, float] = (3.0, 10.0),
        gateway_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        outage_issuer: str | None = None,
        outage_route: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.population = population
        self.scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
        self.clock = clock
        self.routing = routing or RoutingTable.from_population(population)
        low, high = label_delay_days
        if not 0 <= low <= high:
            raise ValueError(f"label delay range must be 0 <= low <= high, got {label_delay_days}")
        self.label_delay_days = (low, high)
        self.gateway_timeout_ms = gateway_timeout_ms
        self.outages: tuple[Outage, ...] = ()
        if self.scenario.outage is not None:
            self.outages = (bind_outage(self.scenario.outage, population, clock.start,
                                        issuer_id=outage_issuer, route_id=outage_route),)
        # Ids must differ between runs (the worker deduplicates by transaction_id) yet be
        # reproducible: derive them from the seed and where the run sits in event time.
        self.run_id = run_id or hashlib.blake2b(
            f"{seed}:{clock.start.isoformat()}".encode(), digest_size=4).hexdigest()

        self._traffic = random.Random(f"traffic:{seed}")
        self._fraud = random.Random(f"fraud:{seed}")
        self._merchant_fraud_rng = random.Random(f"merchant-fraud:{seed}")
        self._outcome = random.Random(f"outcome:{seed}")
        self._labels = random.Random(f"labels:{seed}")
        self._counter = itertools.count()
        self._taken_ids: set[str] = set()

        self._customers = population.customers
        self._customer_cum = list(itertools.accumulate(population.customer_activity))
        self._merchants_by_country: dict[str, tuple[list[Merchant], list[float]]] = {}
        for country in COUNTRIES:
            pairs = [(m, w) for m, w in zip(population.merchants, population.merchant_popularity,
                                            strict=True) if m.country == country.code]
            if pairs:
                self._merchants_by_country[country.code] = (
                    [m for m, _ in pairs], list(itertools.accumulate(w for _, w in pairs)))
        self._all_merchants = list(population.merchants)
        self._merchant_cum = list(itertools.accumulate(population.merchant_popularity))
        self._online = [m for m in population.merchants if m.channel is Channel.ECOMMERCE]
        self._issuer_decline = {i.issuer_id: i.decline_rate for i in population.issuers}
        self._healthy = {(r.route_id, i): healthy_condition(r, i)
                         for r in population.routes for i in population.issuer_ids}
        self._degraded = {(cell, o): degraded_condition(c, o)
                          for cell, c in self._healthy.items() for o in self.outages}
        self._outage_windows = tuple((o, o.start.timestamp(), o.end.timestamp())
                                     for o in self.outages)

        fraud = self.scenario.fraud
        self._fraud_starts = fraud.start_probabilities() if fraud is not None else ()
        self._fraud_any = sum(p for _, p in self._fraud_starts)
        self._merchant_starts = fraud.merchant_start_probabilities() if fraud is not None else ()
        self._merchant_any = sum(p for _, p in self._merchant_starts)
        self._max_compromised = fraud.max_compromised_terminals if fraud is not None else 0
        self._max_merchants = fraud.max_compromised_merchants if fraud is not None else 0
        # merchant -> (start_ts, end_ts, share of its payments that are fraud)
        self._compromised_merchants: dict[str, tuple[float, float, float]] = {}
        self._planned: list[tuple[float, int, _Planned]] = []
        self._compromised: dict[str, tuple[float, float]] = {}  # terminal -> (start_ts, end_ts)
        self._pending_labels: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._last_ts = -math.inf
        self.fraud_counts: dict[str, int] = dict.fromkeys((k.value for k in FraudKind), 0)

    # -- public -------------------------------------------------------------------------------

    def generate(self, event_time: datetime | None = None) -> Generated:
        """The next transaction at ``event_time`` (default: the clock's now) and its outcome."""
        ts = (event_time or self.clock.now()).timestamp()
        if self._fraud_any and self._fraud.random() < self._fraud_any:
            self._start_campaign(ts, self._fraud, self._fraud_starts, self._fraud_any)
        if self._merchant_any and self._merchant_fraud_rng.random() < self._merchant_any:
            self._start_campaign(ts, self._merchant_fraud_rng, self._merchant_starts,
                                 self._merchant_any)
        if self._planned and self._planned[0][0] <= ts:
            planned_ts, _, planned = heapq.heappop(self._planned)
            ts = max(planned_ts, self._last_ts)
            transaction = self._fraud_transaction(planned, ts)
            fraud: str | None = planned.kind.value
        else:
            ts = max(ts, self._last_ts)
            transaction, fraud = self._genuine_transaction(ts)
        self._last_ts = ts
        outcome = self._outcome_for(transaction, ts, fraud)
        if fraud is not None:
            self.fraud_counts[fraud] += 1
            self._schedule_label(transaction, fraud)
        return Generated(transaction, outcome, fraud)

    def due_labels(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Labels whose known_at has passed in event time, oldest first."""
        ts = (now or self.clock.now()).timestamp()
        due = []
        while self._pending_labels and self._pending_labels[0][0] <= ts:
            due.append(heapq.heappop(self._pending_labels)[2])
        return due

    @property
    def pending_labels(self) -> int:
        return len(self._pending_labels)

    def condition(self, route_id: str, issuer_id: str, ts: float) -> RouteCondition:
        """What the (route, issuer) cell delivers at POSIX time ``ts``: baseline unless an
        outage covers it (looked up from precomputed conditions: this runs per transaction)."""
        for outage, start, end in self._outage_windows:
            if start <= ts < end and issuer_id == outage.issuer_id and route_id in outage.route_ids:
                return self._degraded[((route_id, issuer_id), outage)]
        return self._healthy[(route_id, issuer_id)]

    def iter_generate(self, start: datetime, step: timedelta, count: int) -> Iterator[Generated]:
        """``count`` transactions at evenly spaced event times: handy for tests and benchmarks."""
        for n in range(count):
            yield self.generate(start + n * step)

    # -- genuine traffic ----------------------------------------------------------------------

    def _genuine_transaction(self, ts: float) -> tuple[dict[str, Any], str | None]:
        rng = self._traffic
        customer = rng.choices(self._customers, cum_weights=self._customer_cum)[0]
        card = rng.choice(customer.cards)
        merchant = self._pick_merchant(rng, customer)
        terminal = rng.choice(merchant.terminals)
        amount = rng.lognormvariate(math.log(customer.typical_spend), 0.6)
        if merchant.channel is Channel.ATM:
            amount = max(20.0, round(amount * 2, -1))
        device, geo = self._presence(rng, customer, merchant)
        fraud: str | None = None
        window = self._compromised.get(terminal)
        if window is not None:
            if window[0] <= ts < window[1]:
                fraud = FraudKind.COMPROMISED_TERMINAL.value
            elif ts >= window[1]:
                del self._compromised[terminal]
        if fraud is None and self._compromised_merchants:
            fraud = self._merchant_fraud(merchant.merchant_id, ts)
        record = self._record(customer, card, merchant, terminal, amount, device, geo, ts)
        return record, fraud

    def _pick_merchant(self, rng: random.Random, customer: Customer) -> Merchant:
        local = self._merchants_by_country.get(customer.country)
        if local is not None and rng.random() < 0.85:
            return rng.choices(local[0], cum_weights=local[1])[0]
        return rng.choices(self._all_merchants, cum_weights=self._merchant_cum)[0]

    @staticmethod
    def _presence(
        rng: random.Random, customer: Customer, merchant: Merchant
    ) -> tuple[str | None, tuple[float, float] | None]:
        """Device and location as the gateway sees them: card-present uses the terminal's place."""
        if merchant.channel is Channel.ECOMMERCE:
            return rng.choice(customer.devices), (customer.lat, customer.lon)
        return None, (merchant.lat, merchant.lon)

    def _record(
        self,
        customer: Customer,
        card: Card,
        merchant: Merchant,
        terminal: str,
        amount: float,
        device: str | None,
        geo: tuple[float, float] | None,
        ts: float,
    ) -> dict[str, Any]:
        """The transaction record; ``amount`` is in US dollars and converted here."""
        return {
            "transaction_id": f"tx-{self.run_id}-n{next(self._counter):x}",
            "card_token": card.token,
            "customer_id": customer.customer_id,
            "merchant_id": merchant.merchant_id,
            "terminal_id": terminal,
            "merchant_name": merchant.name,
            "mcc": merchant.mcc,
            "amount": Decimal(f"{max(amount * merchant.per_usd, 0.01):.2f}"),
            "currency": merchant.currency,
            "country": merchant.country,
            "geo": None if geo is None else {"lat": geo[0], "lon": geo[1]},
            "device_id": device,
            "channel": merchant.channel.value,
            "issuer_bin": card.bin,
            "issuer_id": card.issuer_id,
            "event_time": from_posix(ts),
        }

    # -- fraud --------------------------------------------------------------------------------

    def _start_campaign(self, ts: float, rng: random.Random,
                        starts: tuple[tuple[FraudKind, float], ...], total: float) -> None:
        roll = rng.random() * total
        kind = starts[-1][0]
        for candidate, p in starts:
            if roll < p:
                kind = candidate
                break
            roll -= p
        shape = CAMPAIGN_SHAPES[kind]
        size = rng.randint(*shape.size)
        span = rng.uniform(*shape.span_s)
        times = sorted([ts] + [ts + rng.uniform(0.0, span) for _ in range(size - 1)])
        customer = rng.choices(self._customers, cum_weights=self._customer_cum)[0]
        card = rng.choice(customer.cards)
        if kind is FraudKind.CARD_TESTING:
            self._card_testing(rng, shape, times, customer, card)
        elif kind is FraudKind.ACCOUNT_TAKEOVER:
            self._account_takeover(rng, shape, times, customer, card)
        elif kind is FraudKind.COMPROMISED_TERMINAL:
            self._compromised_terminal(rng, shape, times, ts + span)
        elif kind is FraudKind.COMPROMISED_MERCHANT:
            self._compromised_merchant(rng, shape, ts, ts + span)
        elif kind is FraudKind.DEVICE_CARD_TESTING:
            self._device_card_testing(rng, shape, times, customer)
        elif kind is FraudKind.FRAUD_RING_DEVICE:
            self._fraud_ring_device(rng, shape, times, customer)
        else:
            merchant = self._pick_merchant(rng, customer)
            amount = max(250.0, customer.typical_spend * rng.uniform(*shape.amount))
            device, geo = self._presence(rng, customer, merchant)
            self._plan(ts, _Planned(kind, customer, card, merchant, rng.choice(merchant.terminals),
                                    amount, device, geo))

    def _card_testing(self, rng: random.Random, shape: CampaignShape, times: list[float],
                      customer: Customer, card: Card) -> None:
        """Tiny amounts from a fraudster's device, far away, at one web shop."""
        merchant = rng.choice(self._online or self._all_merchants)
        device = opaque_id(rng, "dev_", 12, self._taken_ids)
        place = self._far_place(rng, customer)
        for at in times:
            self._plan(at, _Planned(FraudKind.CARD_TESTING, customer, card, merchant,
                                    merchant.terminals[0], rng.uniform(*shape.amount), device,
                                    place))

    def _account_takeover(self, rng: random.Random, shape: CampaignShape, times: list[float],
                          customer: Customer, card: Card) -> None:
        """A never-seen device far from home spending many times the customer's habit."""
        device = opaque_id(rng, "dev_", 12, self._taken_ids)
        place = self._far_place(rng, customer)
        for at in times:
            merchant = rng.choice(self._online or self._all_merchants)
            amount = max(200.0, customer.typical_spend * rng.uniform(*shape.amount))
            self._plan(at, _Planned(FraudKind.ACCOUNT_TAKEOVER, customer, card, merchant,
                                    rng.choice(merchant.terminals), amount, device, place))

    def _compromised_terminal(self, rng: random.Random, shape: CampaignShape, times: list[float],
                              until: float) -> None:
        """Skimmed cards replayed at one terminal; its genuine traffic is tainted too."""
        now = times[0]
        for expired in [t for t, (_, end) in self._compromised.items() if end <= now]:
            del self._compromised[expired]
        if len(self._compromised) >= self._max_compromised:
            return
        merchant = rng.choice(self._all_merchants)
        terminal = rng.choice(merchant.terminals)
        self._compromised[terminal] = (now, until)
        for at in times:
            victim = rng.choices(self._customers, cum_weights=self._customer_cum)[0]
            amount = victim.typical_spend * rng.uniform(*shape.amount)
            device, geo = self._presence(rng, victim, merchant)
            self._plan(at, _Planned(FraudKind.COMPROMISED_TERMINAL, victim,
                                    rng.choice(victim.cards), merchant, terminal, amount, device,
                                    geo))

    def _merchant_fraud(self, merchant_id: str, ts: float) -> str | None:
        """Whether this payment at a compromised merchant is one of the stolen-card ones."""
        window = self._compromised_merchants.get(merchant_id)
        if window is None:
            return None
        start, end, share = window
        if ts >= end:
            del self._compromised_merchants[merchant_id]
            return None
        if start <= ts and self._merchant_fraud_rng.random() < share:
            return FraudKind.COMPROMISED_MERCHANT.value
        return None

    def _compromised_merchant(self, rng: random.Random, shape: CampaignShape, now: float,
                              until: float) -> None:
        """For days, a share of a (popularity-weighted) merchant's payments are stolen cards;
        they look like its usual trade, so only the merchant's known frauds give it away."""
        for expired in [m for m, (_, end, _) in self._compromised_merchants.items()
                        if end <= now]:
            del self._compromised_merchants[expired]
        if len(self._compromised_merchants) >= self._max_merchants:
            return
        merchant = rng.choices(self._all_merchants, cum_weights=self._merchant_cum)[0]
        if merchant.merchant_id not in self._compromised_merchants:
            self._compromised_merchants[merchant.merchant_id] = (now, until,
                                                                 rng.uniform(*shape.amount))

    def _victim_card(self, rng: random.Random) -> tuple[Customer, Card]:
        victim = rng.choices(self._customers, cum_weights=self._customer_cum)[0]
        return victim, rng.choice(victim.cards)

    def _device_card_testing(self, rng: random.Random, shape: CampaignShape,
                             times: list[float], customer: Customer) -> None:
        """One fraudster's device tries many stolen cards, a tiny amount each, at one web shop:
        each card is new to the shop, so only the device ties the attempts together."""
        merchant = rng.choice(self._online or self._all_merchants)
        device = opaque_id(rng, "dev_", 12, self._taken_ids)
        place = self._far_place(rng, customer)
        for at in times:
            victim, card = self._victim_card(rng)
            self._plan(at, _Planned(FraudKind.DEVICE_CARD_TESTING, victim, card, merchant,
                                    merchant.terminals[0], rng.uniform(*shape.amount), device,
                                    place))

    def _fraud_ring_device(self, rng: random.Random, shape: CampaignShape, times: list[float],
                           customer: Customer) -> None:
        """A fraud ring's one device cashes out a pool of stolen cards at a few web shops over
        days, each card a few times, at a few times its owner's usual spend."""
        shops = rng.sample(self._online or self._all_merchants,
                           k=min(3, len(self._online or self._all_merchants)))
        device = opaque_id(rng, "dev_", 12, self._taken_ids)
        place = self._far_place(rng, customer)
        pool = [self._victim_card(rng) for _ in range(max(2, len(times) // 2))]
        for at in times:
            victim, card = rng.choice(pool)
            merchant = rng.choice(shops)
            amount = victim.typical_spend * rng.uniform(*shape.amount)
            self._plan(at, _Planned(FraudKind.FRAUD_RING_DEVICE, victim, card, merchant,
                                    rng.choice(merchant.terminals), amount, device, place))

    def _plan(self, ts: float, planned: _Planned) -> None:
        heapq.heappush(self._planned, (ts, next(self._seq), planned))

    @staticmethod
    def _far_place(rng: random.Random, customer: Customer) -> tuple[float, float]:
        far = [c for c in COUNTRIES
               if distance_km(customer.lat, customer.lon, c.lat, c.lon) > _FAR_KM]
        country = rng.choice(far) if far else COUNTRY_BY_CODE["BR"]
        return (round(country.lat + rng.uniform(-1, 1), 4),
                round(country.lon + rng.uniform(-1, 1), 4))

    def _fraud_transaction(self, planned: _Planned, ts: float) -> dict[str, Any]:
        return self._record(planned.customer, planned.card, planned.merchant, planned.terminal_id,
                            planned.amount, planned.device_id, planned.geo, ts)

    def _schedule_label(self, transaction: dict[str, Any], fraud: str) -> None:
        tx_time: datetime = transaction["event_time"]
        delay = timedelta(days=self._labels.uniform(*self.label_delay_days))
        known_at = whole_millis(tx_time + delay)
        label = {
            "transaction_id": transaction["transaction_id"],
            "card_token": transaction["card_token"],
            "terminal_id": transaction["terminal_id"],
            "merchant_id": transaction["merchant_id"],
            "device_id": transaction["device_id"],
            "label": "FRAUD",
            "fraud_scenario": fraud,
            "transaction_time": tx_time,
            "known_at": known_at,
            "source": "SIMULATOR",
        }
        heapq.heappush(self._pending_labels, (known_at.timestamp(), next(self._seq), label))

    # -- outcomes -----------------------------------------------------------------------------

    def _outcome_for(
        self, transaction: dict[str, Any], ts: float, fraud: str | None
    ) -> dict[str, Any]:
        rng = self._outcome
        issuer_id: str = transaction["issuer_id"]
        route = self.routing.choose(issuer_id, rng)
        condition = self.condition(route, issuer_id, ts)
        decline_p = (_CARD_TESTING_DECLINE if fraud == FraudKind.CARD_TESTING.value
                     else self._issuer_decline[issuer_id])
        # Drawn before the route's fate so the issuer's answer does not depend on the route.
        issuer_declines = rng.random() < decline_p
        latency = rng.lognormvariate(condition.latency_mu, condition.latency_sigma)
        if rng.random() < condition.success:
            if latency >= self.gateway_timeout_ms:
                result, code = "TIMEOUT", "68"
            elif issuer_declines:
                result = "ISSUER_DECLINE"
                code = "51" if rng.random() < 0.4 else "05"
            else:
                result, code = "APPROVED", "00"
        else:
            soft, error, _ = condition.failure_mix
            roll = rng.random()
            if roll < soft:
                result = "SOFT_DECLINE"
                code = "65" if rng.random() < 0.5 else "1A"
            elif roll < soft + error:
                result, code = "ERROR", "96"
                latency *= 0.5  # fails fast
            else:
                result = "TIMEOUT"
                code = "91" if rng.random() < 0.5 else "68"
        if result == "TIMEOUT":
            latency = self.gateway_timeout_ms + rng.uniform(0.0, 250.0)
        latency_ms = max(1, int(latency))
        return {
            "transaction_id": transaction["transaction_id"],
            "card_token": transaction["card_token"],
            "route": route,
            "issuer_id": issuer_id,
            "result": result,
            "response_code": code,
            "latency_ms": latency_ms,
            "attempt": 1,
            "event_time": from_posix(ts + latency_ms / 1000.0),
        }


def measure_generation_rate(
    population: Population, scenario: str = "fraud", count: int = 50_000, seed: int = 1
) -> float:
    """Transactions (with outcomes) generated per second on this core, excluding encoding."""
    clock = EventClock(datetime(2024, 1, 1, tzinfo=UTC), allow_future=True)
    generator = TrafficGenerator(population, scenario, seed, clock)
    start = clock.start
    step = timedelta(milliseconds=10)
    began = time.perf_counter()
    for n in range(count):
        generator.generate(start + n * step)
    return count / (time.perf_counter() - began)
