"""The gateway's routing table: which route each issuer's traffic takes.

It starts from the population's static configuration and then follows the routing-policy topic.
Following the published policy is what closes the self-healing loop: the Pilot shifts weights,
the gateway obeys, and the outcome stream shows whether the shift helped. A policy is applied only
if its version is newer than the one in force, so replaying the compacted topic, or a late
duplicate, can never roll the gateway back; malformed weights are refused rather than guessed at.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from streams.simulator.population import Population


class ApplyResult(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    INVALID = "invalid"


@dataclass(frozen=True)
class _Cell:
    """One issuer's weights, immutable so a reader never sees a half-applied policy."""

    version: int
    routes: tuple[str, ...]
    weights: tuple[float, ...]  # normalized, same order as routes
    cumulative: tuple[float, ...]


class RoutingTable:
    """Per-issuer route weights; thread-safe for one writer (policy thread) and many readers."""

    def __init__(self, routes: Iterable[str], weights: Mapping[str, Mapping[str, float]]) -> None:
        self._routes = tuple(routes)
        self._cells: dict[str, _Cell] = {}
        self._lock = threading.Lock()
        self.applied = 0
        self.stale = 0
        self.invalid = 0
        self.last_error: str | None = None
        for issuer_id, issuer_weights in weights.items():
            self._cells[issuer_id] = self._cell(0, issuer_weights)

    @classmethod
    def from_population(cls, population: Population) -> RoutingTable:
        return cls(population.route_ids, population.default_weights)

    @property
    def routes(self) -> tuple[str, ...]:
        return self._routes

    @property
    def ignored(self) -> int:
        return self.stale + self.invalid

    def version(self, issuer_id: str) -> int:
        return self._cells[issuer_id].version

    def weights(self, issuer_id: str) -> dict[str, float]:
        cell = self._cells[issuer_id]
        return dict(zip(cell.routes, cell.weights, strict=True))

    def choose(self, issuer_id: str, rng: random.Random) -> str:
        cell = self._cells[issuer_id]  # one read: a concurrent apply swaps the whole cell
        i = bisect.bisect_right(cell.cumulative, rng.random() * cell.cumulative[-1])
        return cell.routes[min(i, len(cell.routes) - 1)]

    def apply(self, policy: Mapping[str, Any]) -> ApplyResult:
        """Adopt a routing-policy record if it is newer than what is in force and well formed."""
        try:
            issuer_id = policy["issuer_id"]
            version = policy["version"]
            if issuer_id not in self._cells:
                raise ValueError(f"unknown issuer {issuer_id!r}")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"version must be an int, got {version!r}")
            weights: dict[str, float] = {}
            for entry in policy["weights"]:
                route, weight = entry["route"], float(entry["weight"])
                if route in weights:
                    raise ValueError(f"route {route!r} listed twice")
                weights[route] = weight
            cell = self._cell(version, weights)
        except (KeyError, TypeError, ValueError) as exc:
            return self.reject(f"{type(exc).__name__}: {exc}")
        with self._lock:
            if version <= self._cells[issuer_id].version:
                self.stale += 1
                return ApplyResult.STALE
            self._cells[issuer_id] = cell
            self.applied += 1
            return ApplyResult.APPLIED

    def reject(self, reason: str) -> ApplyResult:
        """Count a policy that could not be used (malformed, or not even decodable)."""
        with self._lock:
            self.invalid += 1
            self.last_error = reason
        return ApplyResult.INVALID

    def _cell(self, version: int, weights: Mapping[str, float]) -> _Cell:
        unknown = set(weights) - set(self._routes)
        if unknown:
            raise ValueError(f"unknown routes {sorted(unknown)}")
        values = [float(weights.get(route, 0.0)) for route in self._routes]
        if any(not math.isfinite(w) or w < 0 for w in values):
            raise ValueError(f"weights must be finite and non-negative: {values}")
        total = sum(values)
        if total <= 0:
            raise ValueError("weights sum to zero")
        normalized = tuple(w / total for w in values)
        cumulative: list[float] = []
        running = 0.0
        for w in normalized:
            running += w
            cumulative.append(running)
        return _Cell(version, self._routes, normalized, tuple(cumulative))
