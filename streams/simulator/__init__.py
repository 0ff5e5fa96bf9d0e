"""The payment-gateway simulator: synthetic traffic, fraud and outages, or a handbook replay.

Only producer.py talks to Kafka; everything else is pure and seedable so it can be tested, and
benchmarked, without a broker.
"""

from streams.simulator.population import Population, build_population
from streams.simulator.routing import ApplyResult, RoutingTable
from streams.simulator.scenarios import SCENARIOS, Scenario, get_scenario, scenario_names
from streams.simulator.traffic import EventClock, Generated, TrafficGenerator

__all__ = [
    "SCENARIOS",
    "ApplyResult",
    "EventClock",
    "Generated",
    "Population",
    "RoutingTable",
    "Scenario",
    "TrafficGenerator",
    "build_population",
    "get_scenario",
    "scenario_names",
]
