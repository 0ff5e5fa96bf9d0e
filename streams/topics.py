"""Every topic the system uses, in one list.

Name, partitions, retention and cleanup policy live here and nowhere else; `rakshit topics --create`
and the worker both read this table. Topics that hold state (routing policy, cases, whitelist,
review queue) are compacted so a new reader rebuilds the current state from the topic alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY_MS = 24 * 3600 * 1000
DEAD_LETTER_MAX_BYTES = 2 * 1024 * 1024


class Topic(StrEnum):
    TRANSACTIONS = "transactions"
    AUTH_OUTCOMES = "authorization-outcomes"
    DECISIONS = "decisions"
    LABELS = "labels"
    HYPOTHESES = "hypotheses"
    EXPERIMENTS = "experiments"
    ROUTING_POLICY = "routing-policy"
    CASES = "cases"
    WHITELIST = "whitelist"
    REVIEW_QUEUE = "review-queue"
    DEAD_LETTERS = "dead-letters"
    SCORING = "scoring-by-terminal"
    ROUTE_OUTCOMES = "route-outcomes"
    CASE_COMMANDS = "case-commands"
    CASE_OPENINGS = "case-openings"
    AUDIT = "audit"
    NOTIFICATIONS = "notifications"
    EVALUATION_QUEUE = "evaluation-queue"
    MODEL_QUALITY = "model-quality"


@dataclass(frozen=True)
class TopicSpec:
    topic: Topic
    schema: str  # the .avsc file (without extension) its values follow
    key: str  # what the record key is, for producers
    partitions: int | None  # None: the configured default
    retention_ms: int  # -1: keep forever
    compacted: bool
    doc: str
    max_message_bytes: int | None = None  # None: the broker's default (1 MiB)

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete",
               "retention.ms": str(self.retention_ms)}
        if self.max_message_bytes:
            cfg["max.message.bytes"] = str(self.max_message_bytes)
        return cfg


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.TRANSACTIONS, "transaction", "card_token", None, 7 * DAY_MS, False,
              "Authorization requests from gateways."),
    TopicSpec(Topic.AUTH_OUTCOMES, "authorization_outcome", "card_token", None, 7 * DAY_MS, False,
              "What each route/issuer answered."),
    TopicSpec(Topic.DECISIONS, "verdict", "transaction_id", None, 30 * DAY_MS, False,
              "One fraud verdict per transaction, plus analyst overrides."),
    # Keyed by card like the transactions, so a label meets the card's state on the same partition.
    TopicSpec(Topic.LABELS, "label", "card_token", None, 400 * DAY_MS, False,
              "Confirmed fraud and chargebacks, arriving days after the transaction."),
    TopicSpec(Topic.HYPOTHESES, "hypothesis", "cell", 1, 30 * DAY_MS, False,
              "The Analyst's degradation hypotheses (it never acts)."),
    TopicSpec(Topic.EXPERIMENTS, "experiment", "experiment_id", 1, 90 * DAY_MS, False,
              "Every step of every Pilot experiment, for SREs to tail."),
    TopicSpec(Topic.ROUTING_POLICY, "routing_policy", "issuer_id", 1, -1, True,
              "Current route weights per issuer; gateways follow it."),
    TopicSpec(Topic.CASES, "case", "case_id", None, -1, True,
              "Fraud-analyst cases, latest state per case."),
    # Read whole by every fraud lane (streams.worker.whitelist): decisions are made by terminal
    # partition, so any lane may decide any card. One partition, since nobody reads a share of
    # it, and one writer (the case agent) puts whitelistings in one order.
    TopicSpec(Topic.WHITELIST, "whitelist", "card_token", 1, -1, True,
              "Whitelisted cards, latest whitelisting per card; every fraud lane reads all of it."),
    # Read whole by every fraud lane (streams.worker.review_queue), like the whitelist: the
    # decision thresholds rise as the case book's queue fills. One key, one partition, one
    # writer (the case agent); compaction keeps the latest depth.
    TopicSpec(Topic.REVIEW_QUEUE, "review_queue", "review-queue", 1, -1, True,
              "Unresolved fraud cases, latest count; every fraud lane reads it."),
    # One record per scoring partition, from whichever worker owns it: the API merges them all
    # into the fleet's AUC, AP and precision (streams.worker.learning). Compacted: the latest.
    TopicSpec(Topic.MODEL_QUALITY, "model_quality", "partition", 1, -1, True,
              "Each scoring partition's window of labelled scores, for fleet-wide quality."),
    TopicSpec(Topic.DEAD_LETTERS, "dead_letter", "source", 1, 30 * DAY_MS, False,
              "Records that could not be processed: original bytes (card data redacted), reason.",
              # Room for any record the input topics accept (1 MiB) plus the dead-letter envelope.
              max_message_bytes=DEAD_LETTER_MAX_BYTES),
    # Internal to the worker: re-keys admitted transactions and labels by terminal for the
    # terminal stage. Short retention: a record here matters only until it is scored.
    TopicSpec(Topic.SCORING, "scoring_event", "merchant_id", None, 1 * DAY_MS, False,
              "Worker-internal: card stage to terminal stage, keyed by merchant."),
    # Internal to the worker: admitted outcomes on one partition, so one Analyst sees every
    # route of an issuer and every issuer of a route (scope needs both) and one Pilot holds the
    # limits that span issuers (concurrent experiments).
    # One partition: the case agent applies every command in log order, so two analysts
    # claiming one case are decided by the log, and one case book holds every case.
    # Only the API may write here (streams.admin.ACLS): the case agent trusts the actor and role
    # inside because the broker took the record from the API principal alone.
    TopicSpec(Topic.CASE_COMMANDS, "case_command", "case_id", 1, 30 * DAY_MS, False,
              "Case commands from the API: analysts' claims, releases, resolutions, "
              "whitelistings, and customers' disputes."),
    # Internal to the worker: the fraud lane's OPEN for each REVIEW verdict, which the case agent
    # reads beside case-commands. A topic of its own so only the API writes case-commands; one
    # partition, like case-commands, for the one case book.
    TopicSpec(Topic.CASE_OPENINGS, "case_command", "transaction_id", 1, 30 * DAY_MS, False,
              "Worker-internal: the fraud lane's OPEN command per REVIEW verdict, for the case "
              "agent."),
    TopicSpec(Topic.AUDIT, "audit", "actor", 1, -1, False,
              "Every case action and every refused attempt, kept forever."),
    TopicSpec(Topic.NOTIFICATIONS, "notification", "card_token", None, 30 * DAY_MS, False,
              "Customer notifications in plain words (no scores, no rule names)."),
    TopicSpec(Topic.ROUTE_OUTCOMES, "outcome_batch", "batch", 1, 1 * DAY_MS, False,
              "Worker-internal: admitted outcomes, batched, for the routing agent."),
    # The evaluator raised on these verdicts (fallbacks evaluation_failed / evaluator_error):
    # what an offline evaluation needs, kept as long as the decisions it would judge.
    TopicSpec(Topic.EVALUATION_QUEUE, "evaluation_request", "transaction_id", 1, 30 * DAY_MS,
              False, "Verdicts the evaluator failed on, with their inputs, to evaluate offline."),
)

SPECS: dict[Topic, TopicSpec] = {spec.topic: spec for spec in TOPICS}


def topic_name(topic: Topic, prefix: str = "") -> str:
    """The Kafka name of a topic; the prefix lets tests share one broker without colliding."""
    return f"{prefix}rakshit.{topic.value}"
