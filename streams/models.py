"""What the worker decides with: the champion (and challenger) from the registry, the rules and
the online learner, assembled into the decision pipeline once at start-up.

No model in the registry is a normal state (a fresh install, or every model rolled back): the
pipeline then decides on the rules alone and every verdict says so (fallbacks model_unavailable,
rules_only).
"""

from __future__ import annotations

import logging

from scoring.registry import Registry

from agents.pipeline import BoosterScorer, DecisionPipeline
from scoring.online import make_online
from scoring.rules import RuleEngine
from streams.config import Settings

log = logging.getLogger(__name__)


def registry_for(settings: Settings) -> Registry:
    return Registry(settings.home / "models")


def build_pipeline(settings: Settings) -> DecisionPipeline:
    registry = registry_for(settings)
    scorers: dict[str, BoosterScorer | None] = {}
    for arm in ("champion", "challenger"):
        version = registry.champion() if arm == "champion" else registry.challenger()
        if version is None:
            scorers[arm] = None
            continue
        model = registry.load(version)
        scorers[arm] = BoosterScorer(model.booster, model.version, model.features)
        log.info("%s model %s loaded (%d features)", arm, model.version, len(model.features))
    return DecisionPipeline(RuleEngine.from_file(), scorers["champion"],
                            challenger=scorers["challenger"], online=make_online())
