"""What the worker decides with: the champion (and challenger) from the registry, the rules and
the online learner, assembled into the decision pipeline once at start-up.

No model in the registry is a normal state (a fresh install, or every model rolled back): the
pipeline then decides on the rules alone and every verdict says so (fallbacks model_unavailable,
rules_only). A challenger registered as shadow is scored and logged but never decides.
"""

from __future__ import annotations

import logging
import time

from agents.fraud.evaluator import Evaluator
from agents.fraud.executor import CircuitBreaker, Executor
from agents.fraud.guardrail import DisparityMonitor, Guardrail
from agents.fraud.learned import Learned
from agents.fraud.pipeline import DecisionPipeline
from agents.fraud.planner import ExperimentSplit, Planner
from agents.fraud.risk_scorer import BoosterScorer
from scoring.blend import BlendConfig
from scoring.online import make_online
from scoring.registry import LoadedModel, ModelRegistry, drift_baselines
from scoring.rules import RuleEngine
from streams.config import Settings

log = logging.getLogger(__name__)

PARTITION_SAMPLE = 2_000  # verdicts per drift report, per scoring partition


def registry_for(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings.models)


def _scorer(model: LoadedModel | None, arm: str) -> BoosterScorer | None:
    if model is None:
        return None
    log.info("%s model %s loaded (%d features)", arm, model.version, len(model.feature_names))
    return BoosterScorer(model.booster, model.version, model.feature_names)


def build_pipeline(settings: Settings) -> DecisionPipeline:
    serving = registry_for(settings).serving()
    challenger = serving.challenger
    shadow = challenger is not None and challenger.shadow
    # The registry says who serves and with what share; the planner is the one place that splits
    # cards between them (a hash of the card token, the same on every worker).
    split = ExperimentSplit(challenger_share=0.0 if shadow else serving.challenger_share,
                            shadow_share=1.0 if shadow else 0.0)
    # Drift is watched against the champion's training distributions (PSI per feature and for
    # the score), so a shifted population shows before the labels that would prove it arrive.
    champion = serving.champion
    baselines = drift_baselines(champion.meta) if champion else None
    # Learning is per scoring partition (agents.fraud.learned); each partition's evaluator
    # reports drift on its own share of the traffic, so on a sample of PARTITION_SAMPLE.
    evaluator = Evaluator(baselines, drift_every=PARTITION_SAMPLE, sample_size=PARTITION_SAMPLE)
    guardrail = Guardrail()

    def make_learned() -> Learned:
        return Learned(make_online(), evaluator.fresh(),
                       DisparityMonitor(guardrail.disparity.config))

    min_labels = settings.online_min_labels
    return DecisionPipeline(
        RuleEngine.from_file(), _scorer(champion, "champion"),
        challenger=None if shadow else _scorer(challenger, "challenger"),
        shadow=_scorer(challenger, "shadow") if shadow else None,
        online=make_online(), planner=Planner(split), evaluator=evaluator, guardrail=guardrail,
        make_executor=cpu_timed_executor, make_learned=make_learned,
        blend_config=BlendConfig(min_labels=min_labels, full_labels=25 * max(1, min_labels)))


def cpu_timed_executor() -> Executor:
    """The model's time budget counted in this thread's CPU seconds, not wall seconds.

    On a busy machine a batch call can wait for a core (or for the GIL) longer than the model
    takes; wall time would then turn a busy worker's verdicts into rules-only fallbacks. CPU time
    charges the model only for its own work, so a model that has really become slow still times
    out. The circuit breaker's cool-down stays in wall seconds.
    """
    return Executor(clock=time.thread_time, breaker=CircuitBreaker(clock=time.monotonic))
