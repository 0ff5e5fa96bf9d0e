"""Named scenarios: what goes wrong, when, and how badly.

A scenario is plain data so the CLI can list it and tests can reason about it. Fraud intensity is
stated per transaction (campaign starts per 10,000 transactions) rather than per hour, so the
fraud share stays the same whatever rate and event-time speedup a run uses. Outage windows are
event-time offsets from the run's first event, so a sped-up run still shows the whole episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from streams.simulator.population import Population, Route


class FraudKind(StrEnum):
    """Ground-truth fraud patterns; the value is the label's fraud_scenario."""

    CARD_TESTING = "card-testing"
    ACCOUNT_TAKEOVER = "account-takeover"
    COMPROMISED_TERMINAL = "compromised-terminal"
    AMOUNT_SPIKE = "amount-spike"
    # Merchant and device patterns: what the merchant and device features exist to catch.
    COMPROMISED_MERCHANT = "compromised-merchant"
    DEVICE_CARD_TESTING = "device-card-testing"
    FRAUD_RING_DEVICE = "fraud-ring-device"


@dataclass(frozen=True)
class CampaignShape:
    """How one campaign of a kind looks: how many transactions, over how long, for how much."""

    size: tuple[int, int]  # transactions per campaign (inclusive range)
    span_s: tuple[float, float]  # event-time seconds the campaign lasts
    amount: tuple[float, float]  # absolute amounts, or multiples of typical spend (see kind)


CAMPAIGN_SHAPES: dict[FraudKind, CampaignShape] = {
    # Many tiny authorizations on one stolen card at one web shop within minutes.
    FraudKind.CARD_TESTING: CampaignShape((15, 40), (120.0, 600.0), (0.50, 3.00)),
    # A new device, far from home, spending 5-15x the customer's usual amount.
    FraudKind.ACCOUNT_TAKEOVER: CampaignShape((2, 6), (600.0, 5400.0), (5.0, 15.0)),
    # Skimmed cards used at one terminal; everything through it in the window is fraud.
    FraudKind.COMPROMISED_TERMINAL: CampaignShape((10, 40), (1800.0, 7200.0), (0.6, 1.6)),
    # One purchase far above the customer's habits (handbook scenario 1 is amount > 220).
    FraudKind.AMOUNT_SPIKE: CampaignShape((1, 1), (0.0, 0.0), (8.0, 25.0)),
    # A breached or colluding merchant: for days, this share of its payments are stolen cards
    # that look like its usual trade (amount: the share; nothing on the card gives it away).
    FraudKind.COMPROMISED_MERCHANT: CampaignShape((1, 1), (3 * 86400.0, 10 * 86400.0),
                                                  (0.2, 0.5)),
    # Card testing from one device: many stolen cards, one tiny amount each, at one web shop.
    FraudKind.DEVICE_CARD_TESTING: CampaignShape((15, 40), (120.0, 900.0), (0.50, 3.00)),
    # A fraud ring's device: many stolen cards cashed out at a few web shops over days, at
    # 1-4x each victim's usual spend.
    FraudKind.FRAUD_RING_DEVICE: CampaignShape((20, 60), (86400.0, 5 * 86400.0), (1.0, 4.0)),
}


@dataclass(frozen=True)
class FraudMix:
    """Campaign starts per 10,000 transactions; the defaults give roughly 1% fraud."""

    card_testing: float = 2.0
    account_takeover: float = 3.0
    compromised_terminal: float = 0.5
    amount_spike: float = 10.0
    compromised_merchant: float = 0.3
    device_card_testing: float = 1.0
    fraud_ring_device: float = 0.3
    # A compromised terminal taints all its traffic, which grows with the event rate; capping how
    # many are compromised at once keeps the fraud share bounded at any rate and speedup.
    max_compromised_terminals: int = 2
    max_compromised_merchants: int = 2  # likewise: a merchant's whole trade is at stake

    def start_probabilities(self) -> tuple[tuple[FraudKind, float], ...]:
        return (
            (FraudKind.CARD_TESTING, self.card_testing / 10_000),
            (FraudKind.ACCOUNT_TAKEOVER, self.account_takeover / 10_000),
            (FraudKind.COMPROMISED_TERMINAL, self.compromised_terminal / 10_000),
            (FraudKind.AMOUNT_SPIKE, self.amount_spike / 10_000),
        )

    def merchant_start_probabilities(self) -> tuple[tuple[FraudKind, float], ...]:
        """The merchant and device patterns, drawn from a random stream of their own so that
        adding them left the card patterns' campaigns as they were."""
        return (
            (FraudKind.COMPROMISED_MERCHANT, self.compromised_merchant / 10_000),
            (FraudKind.DEVICE_CARD_TESTING, self.device_card_testing / 10_000),
            (FraudKind.FRAUD_RING_DEVICE, self.fraud_ring_device / 10_000),
        )


@dataclass(frozen=True)
class OutageSpec:
    """A degradation of routes to one issuer, in event time relative to the run's start."""

    issuer_wide: bool  # every route to the issuer, or only one
    start_s: float = 60.0
    duration_s: float = 600.0
    success: float = 0.50  # P(route delivers) while degraded, down from ~0.92
    latency_factor: float = 5.0
    failure_mix: tuple[float, float, float] = (0.15, 0.35, 0.50)  # timeouts dominate


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fraud: FraudMix | None = None
    outage: OutageSpec | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("normal", "Healthy routes, genuine traffic only."),
        Scenario("fraud", "Normal traffic plus card testing (one card, or many cards from "
                          "one device), account takeover, compromised terminals and "
                          "merchants, fraud-ring devices and amount spikes, each labelled "
                          "days later.",
                 fraud=FraudMix()),
        Scenario("issuer-outage", "One route to one issuer degrades for a window: success "
                                  "~0.92 -> 0.50, latency x5, timeouts rise.",
                 outage=OutageSpec(issuer_wide=False)),
        Scenario("issuer-wide-outage", "Every route to one issuer degrades for a window: "
                                       "rerouting cannot help.",
                 outage=OutageSpec(issuer_wide=True)),
        Scenario("mixed", "Fraud campaigns and a single-route issuer outage together.",
                 fraud=FraudMix(), outage=OutageSpec(issuer_wide=False)),
    )
}


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}") from None


@dataclass(frozen=True)
class Outage:
    """An outage bound to concrete ids and absolute event times."""

    issuer_id: str
    route_ids: frozenset[str]
    start: datetime
    end: datetime
    success: float
    latency_factor: float
    failure_mix: tuple[float, float, float]

    def affects(self, route_id: str, issuer_id: str, ts: float) -> bool:
        """Whether the (route, issuer) cell is degraded at POSIX time ``ts``."""
        return (issuer_id == self.issuer_id and route_id in self.route_ids
                and self.start.timestamp() <= ts < self.end.timestamp())


def bind_outage(
    spec: OutageSpec,
    population: Population,
    run_start: datetime,
    *,
    issuer_id: str | None = None,
    route_id: str | None = None,
) -> Outage:
    """Resolve which cell fails: by default the busiest issuer and its primary route."""
    issuer = issuer_id or population.busiest_issuer()
    population.issuer(issuer)  # validates
    if spec.issuer_wide:
        routes = frozenset(population.route_ids)
    else:
        route = route_id or population.primary_route(issuer)
        population.route(route)
        routes = frozenset({route})
    if not 0.0 <= spec.success <= 1.0 or spec.latency_factor <= 0 or spec.duration_s < 0:
        raise ValueError(f"implausible outage {spec}")
    start = run_start + timedelta(seconds=spec.start_s)
    return Outage(issuer, routes, start, start + timedelta(seconds=spec.duration_s),
                  spec.success, spec.latency_factor, spec.failure_mix)


@dataclass(frozen=True)
class RouteCondition:
    """What a (route, issuer) cell delivers at one instant."""

    success: float
    latency_mu: float  # log of the median latency in ms (lognormal mu)
    latency_sigma: float
    failure_mix: tuple[float, float, float]


def healthy_condition(route: Route, issuer_id: str) -> RouteCondition:
    return RouteCondition(route.baseline_success[issuer_id], math.log(route.latency_median_ms),
                          route.latency_sigma, route.failure_mix)


def degraded_condition(healthy: RouteCondition, outage: Outage) -> RouteCondition:
    """An outage caps success (never raises it) and stretches latency, with a wider spread."""
    return RouteCondition(min(healthy.success, outage.success),
                          healthy.latency_mu + math.log(outage.latency_factor),
                          healthy.latency_sigma + 0.2, outage.failure_mix)

