"""The fraud decision agents, one per step of a verdict, chained by ``pipeline``.

planner (what to compute) -> executor (run it, with fallbacks) -> risk scoring (model, rules,
online learner, blended) -> evaluator (drift and explanations) -> guardrail (hard limits) ->
decision (approve / review / decline, with reasons).
"""
