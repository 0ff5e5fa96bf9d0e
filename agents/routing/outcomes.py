"""Authorization outcomes as the routing agents see them, and what counts against a route.

A route (acquirer connection) can fix whether the issuer gets the request and answers in time; it
cannot change the issuer's answer. So an issuer decline is a *delivered* attempt, like an approval,
and only soft declines, errors and timeouts count against the route. Counting issuer declines as
failures would blame a route for a customer's empty account and shift traffic for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.clock import millis_of

DELIVERED = frozenset({"APPROVED", "ISSUER_DECLINE"})
ROUTE_FAILURES = frozenset({"SOFT_DECLINE", "ERROR", "TIMEOUT"})


def cell_key(route: str, issuer_id: str) -> str:
    """The one spelling of a (route, issuer) cell, used as a table key and in records."""
    return f"{route}|{issuer_id}"


def split_cell(key: str) -> tuple[str, str]:
    route, _, issuer_id = key.partition("|")
    return route, issuer_id


@dataclass(frozen=True, slots=True)
class Outcome:
    route: str
    issuer_id: str
    result: str  # one of DELIVERED | ROUTE_FAILURES, or UNKNOWN
    latency_ms: float
    event_ms: int

    @property
    def cell(self) -> str:
        return cell_key(self.route, self.issuer_id)

    @property
    def delivered(self) -> bool:
        return self.result in DELIVERED

    @property
    def approved(self) -> bool:
        return self.result == "APPROVED"

    @property
    def counts_for_route(self) -> bool:
        """Whether the attempt says anything about the route (UNKNOWN results do not)."""
        return self.result in DELIVERED or self.result in ROUTE_FAILURES

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Outcome:
        """From a decoded authorization_outcome record (event_time a datetime or epoch ms)."""
        return cls(str(record["route"]), str(record["issuer_id"]), str(record["result"]),
                   float(record["latency_ms"]), millis_of(record["event_time"]))
