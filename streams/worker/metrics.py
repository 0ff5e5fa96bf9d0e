"""Prometheus metrics served by the worker.

Labels are topic names, reasons and decisions only: never a key, token or any record content, so
no card data can reach a metric label.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("rakshit_events_in", "Records consumed, by topic.", ["topic"])
EVENTS_OUT = Counter("rakshit_events_out", "Records produced, by topic.", ["topic"])
DEAD_LETTERS = Counter("rakshit_dead_letters", "Records sent to the dead-letter topic.",
                       ["reason"])
PAN_REDACTIONS = Counter("rakshit_pan_redactions",
                         "Card numbers found in input and redacted before any write.", ["topic"])
VERDICTS = Counter("rakshit_verdicts", "Verdicts produced, by decision.", ["decision"])
VERDICT_LATENCY = Histogram(
    "rakshit_verdict_latency_seconds",
    "From the transaction's Kafka timestamp to its verdict handed to the producer.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
FALLBACKS = Counter("rakshit_fallbacks", "Degraded paths taken by the decision chain, by name.",
                    ["fallback"])
FEATURE_STORE_ERRORS = Counter("rakshit_feature_store_errors",
                               "Card-state reads or writes that failed (cached features used).")
LABELS_WITHOUT_TERMINAL = Counter("rakshit_labels_without_terminal",
                                  "Labels naming no terminal: terminal risk cannot count them.")
# What labels teach once event time passes their known_at (streams.worker.stages.TerminalStage).
LABELS_LEARNED = Counter("rakshit_labels_learned",
                         "Labels matched to the score this worker gave their transaction: one "
                         "step of the online learner and one point of the evaluator's AUC/AP.",
                         ["source"])
LABELS_REPLAYED = Counter("rakshit_labels_replayed",
                          "Labels read again after a restart and skipped: their partition's "
                          "learners had already taken them in")
VERDICTS_RESENT = Counter("rakshit_verdicts_resent",
                          "Verdicts read back from the decision topic after a restart and sent "
                          "again unchanged instead of deciding the transaction a second time")
LABELS_UNMATCHED = Counter("rakshit_labels_unmatched",
                           "Labels for transactions this worker did not score (or no longer "
                           "remembers): terminal risk counts them, the learners cannot.")
ONLINE_LABELS = Gauge("rakshit_online_labels_seen",
                      "Labels the online learner has learned from (its weight in the blend "
                      "grows with them).")
EVALUATOR_LABELS = Gauge("rakshit_evaluator_labels",
                         "Labels the evaluator has added to its rolling AUC/AP since start.")
EVALUATOR_FEEDBACK = Gauge("rakshit_evaluator_feedback",
                           "Analysts' findings on flagged payments the evaluator has counted "
                           "towards its false-positive rate since start.")
FALSE_POSITIVE_RATE = Gauge("rakshit_false_positive_rate",
                            "Share of flagged payments analysts found genuine, which the "
                            "decision thresholds adapt to (set once enough findings are in).")
WHITELISTED_CARDS = Gauge("rakshit_whitelisted_cards",
                          "Whitelistings the fraud lane holds, one per card (each applies only "
                          "to payments made before its end).")
WHITELIST_APPROVALS = Counter("rakshit_whitelist_approvals",
                              "Payments approved because their card is whitelisted: the model "
                              "alone would have sent them to review.")
REVIEW_QUEUE_SEEN = Gauge("rakshit_review_queue_seen",
                          "Unresolved cases as the fraud lane last read them from the case "
                          "agent (rakshit.review-queue): the depth its thresholds adapt to.")
WORKER_READY = Gauge("rakshit_worker_ready",
                     "1 once tables are recovered and partitions assigned; 0 while rebalancing.")
CONSUMER_LAG = Gauge("rakshit_consumer_lag",
                     "Records on the partition not yet processed by this worker.",
                     ["topic", "partition"])
ACKS_REFUSED = Counter("rakshit_acks_refused",
                       "Acks of records skipped during a rebalance, not counted towards the "
                       "committed offset (streams.worker.transport): each is delivered again.",
                       ["topic"])
SEND_RETRIES = Counter("rakshit_send_retries",
                       "Sends the producer refused and the worker retried (never dropped).",
                       ["topic"])
OFFSET_HOLES = Counter("rakshit_offset_holes",
                       "A record an agent never finished below one it did: commits hold there.",
                       ["topic"])
OFFSET_REREADS = Counter("rakshit_offset_rereads",
                         "Partitions sought back to an unfinished record "
                         "(streams.worker.transport).",
                         ["topic"])
HYPOTHESES = Counter("rakshit_hypotheses", "Analyst hypotheses published.",
                     ["status", "scope", "cause"])
EXPERIMENT_STEPS = Counter("rakshit_experiment_steps",
                           "Pilot experiment steps published; guardrail names a refusal's rule.",
                           ["step", "guardrail"])
POLICY_CHANGES = Counter("rakshit_policy_changes", "Routing-policy versions published, by issuer.",
                         ["issuer"])
ACTIVE_EXPERIMENTS = Gauge("rakshit_active_experiments", "Pilot experiments in progress.")
CASE_ACTIONS = Counter("rakshit_case_actions", "Case commands applied, by kind and outcome.",
                       ["command", "outcome"])
CASE_QUEUE = Gauge("rakshit_case_queue", "Cases open or claimed, not yet resolved.")
CASE_OLDEST_S = Gauge("rakshit_case_oldest_open_seconds",
                      "Age of the oldest unresolved case, in seconds.")
GUARDRAIL_FAILURES = Counter("rakshit_guardrail_failures",
                             "Guardrail checks that failed on a verdict, by check name.",
                             ["check"])
DRIFT_PSI = Gauge("rakshit_drift_psi",
                  "Population stability index against the champion's training baseline, per "
                  "feature and for the score (0.1: watch, 0.25: act).", ["feature"])
DRIFT_FALLBACKS = Gauge("rakshit_drift_fallbacks",
                        "Drift reports measured against the historical baseline (the worker's "
                        "first sample) because the registry's baselines were missing or failed.")
DRIFT_HISTORICAL = Gauge("rakshit_drift_historical",
                         "1 when the latest drift report used the historical baseline.")
EVALUATION_QUEUED = Counter("rakshit_evaluation_queued",
                            "Verdicts the evaluator failed on, queued for offline evaluation.")
# The fraud lane (streams.worker): where a batch's time goes, and its state.
STAGE_SECONDS = Histogram(
    "rakshit_stage_seconds",
    "Seconds per batch spent in each step of the fraud lane (card, terminal, batch, checkpoint).",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
BATCH_RECORDS = Histogram("rakshit_batch_records", "Records per batch the fraud lane consumed.",
                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
STATE_KEYS = Gauge("rakshit_state_keys", "Keys held in memory per store (cards, terminals).",
                   ["store"])
STATE_EXPIRED = Counter("rakshit_state_expired",
                        "State keys deleted because their newest event fell out of use "
                        "(scoring.retention), per store.", ["store"])
STATE_RECOVERY = Histogram("rakshit_state_recovery_seconds",
                           "Seconds to rebuild one partition's state from its changelog.",
                           ["store"], buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
HELD_DECISIONS = Gauge("rakshit_held_decisions",
                       "Transactions observed but not yet decided: their terminal history is "
                       "incomplete until every input partition's watermark passes.")
WATERMARK_WAIT = Histogram("rakshit_watermark_wait_seconds",
                           "Seconds a held transaction waited for the watermarks before its "
                           "decision (only those that had to wait).",
                           buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 30))
WATERMARK_TIMEOUTS = Counter("rakshit_watermark_timeouts",
                             "Decisions made after waiting the longest allowed for watermarks "
                             "(fallback watermark_timeout: terminal history may be incomplete).")


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: prometheus_client's own lookup takes a few
    microseconds, which per record is a tenth of the hot path's budget. Label values here are
    topics, reasons and decisions, a bounded set."""
    key = (id(metric), labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found
