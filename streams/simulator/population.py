"""The simulated world: customers, cards, merchants, issuers and the routes between them.

Everything is drawn from one seeded generator so that a seed names a world: the same seed gives
an identical population in any process, which is what makes simulator runs and tests repeatable.
Identifiers are opaque and never look like card numbers (the worker redacts anything that does),
so a long run of digits in any id is rejected at generation time rather than redacted later.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# A digit run this long could join with a neighbour into something PAN-shaped; ids never carry one.
_LONG_DIGITS = re.compile(r"\d{7,}")


class Channel(StrEnum):
    """The Channel enum symbols of schemas/transaction.avsc that the simulator uses."""

    UNKNOWN = "UNKNOWN"
    POS = "POS"
    ECOMMERCE = "ECOMMERCE"
    ATM = "ATM"


@dataclass(frozen=True)
class Country:
    code: str
    currency: str
    lat: float
    lon: float
    share: float  # share of customers living there
    per_usd: float  # rough price level: local units per US dollar


# A handful of markets far enough apart that "far from home" is unambiguous.
COUNTRIES: tuple[Country, ...] = (
    Country("IN", "INR", 19.08, 72.88, 0.45, 83.0),
    Country("GB", "GBP", 51.51, -0.13, 0.12, 0.8),
    Country("DE", "EUR", 52.52, 13.40, 0.10, 0.92),
    Country("FR", "EUR", 48.86, 2.35, 0.08, 0.92),
    Country("US", "USD", 40.71, -74.01, 0.12, 1.0),
    Country("SG", "SGD", 1.35, 103.82, 0.08, 1.35),
    Country("AE", "AED", 25.20, 55.27, 0.05, 3.67),
    # Nobody lives here: only fraudsters shop from it.
    Country("BR", "BRL", -23.55, -46.63, 0.0, 5.0),
)
COUNTRY_BY_CODE: dict[str, Country] = {c.code: c for c in COUNTRIES}

# (MCC, channel, name nouns) per merchant kind.
_POS_KINDS: tuple[tuple[str, str], ...] = (
    ("5411", "Grocers"), ("5812", "Kitchen"), ("5541", "Fuel"), ("5732", "Electronics"),
    ("5651", "Outfitters"), ("5912", "Pharmacy"), ("5814", "Cafe"),
)
_ONLINE_KINDS: tuple[tuple[str, str], ...] = (
    ("5999", "Marketplace"), ("5816", "Games"), ("4511", "Airways"), ("5735", "Music"),
    ("5964", "Direct"),
)
_ATM_KIND = ("6011", "Cash Point")
_ADJECTIVES = (
    "Amber", "Blue", "Cedar", "Delta", "Emerald", "Falcon", "Golden", "Harbor", "Indigo",
    "Juniper", "Kestrel", "Lotus", "Maple", "Nova", "Orchid", "Pearl", "Quartz", "Saffron",
    "Teak", "Umber", "Velvet", "Willow", "Zephyr",
)
_ISSUER_NAMES = (
    "Aurora Bank", "Banyan Trust", "Cobalt Credit", "Deccan Federal", "Ember Savings",
    "Fjord Bank", "Granite Mutual", "Heron Bank", "Ivory Cooperative", "Jade Finance",
)
_ROUTE_NAMES = (
    "North Acquiring", "South Acquiring", "East Acquiring", "West Acquiring", "Central Acquiring",
)


@dataclass(frozen=True)
class Card:
    token: str  # vault token, "tok_<hex>"
    issuer_id: str
    bin: str  # 6-digit BIN prefix of the issuer


@dataclass(frozen=True)
class Customer:
    customer_id: str
    country: str
    lat: float
    lon: float
    cards: tuple[Card, ...]
    devices: tuple[str, ...]
    typical_spend: float  # median amount in US dollars, converted at the merchant's currency


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    mcc: str
    channel: Channel
    country: str
    lat: float
    lon: float
    terminals: tuple[str, ...]

    @property
    def currency(self) -> str:
        return COUNTRY_BY_CODE[self.country].currency

    @property
    def per_usd(self) -> float:
        return COUNTRY_BY_CODE[self.country].per_usd


@dataclass(frozen=True)
class Issuer:
    issuer_id: str
    name: str
    bins: tuple[str, ...]
    decline_rate: float  # the issuer's own declines (funds, do-not-honour): route-independent


@dataclass(frozen=True)
class Route:
    """An acquirer path to issuers; success and latency are what it delivers when healthy."""

    route_id: str
    name: str
    latency_median_ms: float
    latency_sigma: float
    baseline_success: Mapping[str, float] = field(hash=False)  # issuer_id -> P(route delivers)
    failure_mix: tuple[float, float, float] = (0.4, 0.35, 0.25)  # soft decline, error, timeout


@dataclass(frozen=True)
class Population:
    seed: int
    customers: tuple[Customer, ...]
    merchants: tuple[Merchant, ...]
    issuers: tuple[Issuer, ...]
    routes: tuple[Route, ...]
    # issuer_id -> route_id -> weight of the gateway's static configuration before any policy.
    default_weights: Mapping[str, Mapping[str, float]] = field(hash=False)
    # Relative activity: a few customers and merchants account for much of the traffic.
    customer_activity: tuple[float, ...] = field(hash=False, repr=False)
    merchant_popularity: tuple[float, ...] = field(hash=False, repr=False)

    @property
    def issuer_ids(self) -> tuple[str, ...]:
        return tuple(i.issuer_id for i in self.issuers)

    @property
    def route_ids(self) -> tuple[str, ...]:
        return tuple(r.route_id for r in self.routes)

    def issuer(self, issuer_id: str) -> Issuer:
        for issuer in self.issuers:
            if issuer.issuer_id == issuer_id:
                return issuer
        raise KeyError(f"unknown issuer {issuer_id!r}; known: {', '.join(self.issuer_ids)}")

    def route(self, route_id: str) -> Route:
        for route in self.routes:
            if route.route_id == route_id:
                return route
        raise KeyError(f"unknown route {route_id!r}; known: {', '.join(self.route_ids)}")

    def primary_route(self, issuer_id: str) -> str:
        weights = self.default_weights[issuer_id]
        return max(weights, key=lambda r: weights[r])

    def busiest_issuer(self) -> str:
        """The issuer holding most cards, where an outage is most visible."""
        counts = dict.fromkeys(self.issuer_ids, 0)
        for customer in self.customers:
            for card in customer.cards:
                counts[card.issuer_id] += 1
        return max(self.issuer_ids, key=lambda i: counts[i])


def opaque_id(rng: random.Random, prefix: str, hex_chars: int, taken: set[str]) -> str:
    """A fresh random id that cannot be mistaken for (part of) a card number."""
    while True:
        body = f"{rng.getrandbits(4 * hex_chars):0{hex_chars}x}"
        candidate = prefix + body
        if not _LONG_DIGITS.search(body) and candidate not in taken:
            taken.add(candidate)
            return candidate


def _slug(name: str) -> str:
    return name.split()[0].lower()


def _jitter(rng: random.Random, lat: float, lon: float, spread: float) -> tuple[float, float]:
    return (round(lat + rng.uniform(-spread, spread), 4),
            round(lon + rng.uniform(-spread, spread), 4))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance; enough to decide what is 'far from home'."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def build_population(
    seed: int,
    *,
    customers: int = 2000,
    merchants: int = 400,
    issuers: int = 6,
    routes: int = 3,
) -> Population:
    """Draw a world from ``seed``; the same arguments always give an equal population."""
    if not 1 <= issuers <= len(_ISSUER_NAMES):
        raise ValueError(f"issuers must be 1..{len(_ISSUER_NAMES)}")
    if not 1 <= routes <= len(_ROUTE_NAMES):
        raise ValueError(f"routes must be 1..{len(_ROUTE_NAMES)}")
    if customers < 1 or merchants < 1:
        raise ValueError("need at least one customer and one merchant")
    rng = random.Random(f"population:{seed}")
    taken: set[str] = set()

    issuer_list = _build_issuers(rng, issuers)
    route_list = _build_routes(rng, routes, issuer_list)
    route_ids = [r.route_id for r in route_list]
    default_weights: dict[str, dict[str, float]] = {}
    for i, issuer in enumerate(issuer_list):
        # Spread primaries over routes so every acquirer carries real traffic.
        weights = dict.fromkeys(route_ids, 0.0)
        if len(route_ids) == 1:
            weights[route_ids[0]] = 1.0
        else:
            weights[route_ids[i % len(route_ids)]] = 0.85
            weights[route_ids[(i + 1) % len(route_ids)]] = 0.15
        default_weights[issuer.issuer_id] = weights

    # Market share falls off with rank, so issuers differ in how much traffic they see.
    issuer_share = [1.0 / (rank + 1) for rank in range(len(issuer_list))]
    homes = [c for c in COUNTRIES if c.share > 0]
    customer_list: list[Customer] = []
    for n in range(customers):
        home = rng.choices(homes, weights=[c.share for c in homes])[0]
        lat, lon = _jitter(rng, home.lat, home.lon, 1.5)
        cards = []
        for _ in range(rng.randint(1, 3)):
            issuer = rng.choices(issuer_list, weights=issuer_share)[0]
            cards.append(Card(opaque_id(rng, "tok_", 16, taken), issuer.issuer_id,
                              rng.choice(issuer.bins)))
        devices = tuple(opaque_id(rng, "dev_", 12, taken) for _ in range(rng.randint(1, 2)))
        spend = round(min(400.0, max(4.0, rng.lognormvariate(math.log(35.0), 0.6))), 2)
        customer_list.append(Customer(f"cust-{n:05d}", home.code, lat, lon, tuple(cards),
                                      devices, spend))

    merchant_list: list[Merchant] = []
    for n in range(merchants):
        kind_roll = rng.random()
        if kind_roll < 0.05:
            mcc, noun = _ATM_KIND
            channel = Channel.ATM
        elif kind_roll < 0.30:
            mcc, noun = rng.choice(_ONLINE_KINDS)
            channel = Channel.ECOMMERCE
        else:
            mcc, noun = rng.choice(_POS_KINDS)
            channel = Channel.POS
        country = rng.choices(homes, weights=[c.share for c in homes])[0]
        lat, lon = _jitter(rng, country.lat, country.lon, 1.0)
        terminals = tuple(f"term-{n:05d}-{k}" for k in range(1, rng.randint(1, 4) + 1))
        merchant_list.append(Merchant(f"mer-{n:05d}", f"{rng.choice(_ADJECTIVES)} {noun}", mcc,
                                      channel, country.code, lat, lon, terminals))

    return Population(
        seed=seed,
        customers=tuple(customer_list),
        merchants=tuple(merchant_list),
        issuers=tuple(issuer_list),
        routes=tuple(route_list),
        default_weights=default_weights,
        customer_activity=tuple(rng.lognormvariate(0.0, 0.8) for _ in customer_list),
        merchant_popularity=tuple(rng.lognormvariate(0.0, 1.0) for _ in merchant_list),
    )


def _build_issuers(rng: random.Random, count: int) -> list[Issuer]:
    used_bins: set[str] = set()
    issuers = []
    for name in _ISSUER_NAMES[:count]:
        bins: list[str] = []
        wanted = rng.randint(2, 3)
        while len(bins) < wanted:
            candidate = rng.choice("45") + f"{rng.randrange(100_000):05d}"
            if candidate not in used_bins:
                used_bins.add(candidate)
                bins.append(candidate)
        issuers.append(Issuer(f"iss-{_slug(name)}", name, tuple(bins),
                              round(rng.uniform(0.03, 0.06), 4)))
    return issuers


def _build_routes(rng: random.Random, count: int, issuers: list[Issuer]) -> list[Route]:
    routes = []
    for name in _ROUTE_NAMES[:count]:
        soft, error, timeout = (rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.4),
                                rng.uniform(0.15, 0.3))
        total = soft + error + timeout
        routes.append(Route(
            route_id=f"acq-{_slug(name)}",
            name=name,
            latency_median_ms=round(rng.uniform(90.0, 260.0), 1),
            latency_sigma=round(rng.uniform(0.25, 0.45), 3),
            baseline_success={i.issuer_id: round(rng.uniform(0.90, 0.95), 4) for i in issuers},
            failure_mix=(soft / total, error / total, timeout / total),
        ))
    return routes
