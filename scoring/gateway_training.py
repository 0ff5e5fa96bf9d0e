"""Training on gateway-shaped traffic (the simulator's), judged with and without the merchant
and device features, and registered with its feature list.

The split is the handbook's rule with the simulator's label delay (a label is known 3-10 days
after its transaction, so ``delay_days`` is 10): the first ``warmup_days`` only fill the
features' windows, training runs up to the delay before the test, and the test is the last
``test_days``, leaving out cards whose frauds were known by each test day. Both arms use the
same rows, split, seed and parameters (``DEFAULT_CHOICE``), and differ only in their columns,
so the gap in Average Precision is what the two features add.

The model registered is the production recipe: the same parameters on the latest days whose
labels are all known by the data's end, with the out-of-time figures of the judged fold.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd

from scoring import features
from scoring.registry import ModelRegistry
from scoring.train import DEFAULT_CHOICE, TIME, Window, score_window, train_model

MERCHANT_FEATURES = [f.name for f in features.FEATURES if f.entity == "merchant"]
SIMULATOR_DELAY_DAYS = 10


def split_days(frame: pd.DataFrame, *, warmup_days: int, test_days: int,
               delay_days: int) -> Window:
    """The judged fold over the frame's days: after the warm-up, before the delay, the test."""
    first = frame[TIME].min().date()
    last = frame[TIME].max().date()
    test_start = last - timedelta(days=test_days - 1)
    train_end = test_start - timedelta(days=delay_days + 1)
    train_start = first + timedelta(days=warmup_days)
    if train_end < train_start:
        raise ValueError(f"{(last - first).days + 1} days hold no training period after a "
                         f"{warmup_days}-day warm-up, a {delay_days}-day delay and "
                         f"{test_days} test days")
    return Window(train_start, train_end, test_start, last, delay_days)


def lift(frame: pd.DataFrame, window: Window) -> dict[str, Any]:
    """The judged fold with every gateway feature and without the merchant and device ones."""
    full = features.feature_names("gateway")
    reduced = [c for c in full if c not in MERCHANT_FEATURES]
    arms = {}
    for arm, cols in (("with", full), ("without", reduced)):
        report = score_window(frame, window, feature_cols=cols, params=DEFAULT_CHOICE)
        arms[arm] = {"features": len(cols), **report["folds"][0]}
    with_ap = arms["with"]["average_precision"]
    without_ap = arms["without"]["average_precision"]
    return {"window": window.describe(), "with": arms["with"], "without": arms["without"],
            "average_precision_lift": with_ap - without_ap, "params": dict(DEFAULT_CHOICE)}


def train_and_register(frame: pd.DataFrame, registry: ModelRegistry, *, notes: str,
                       source: str, warmup_days: int = 7, test_days: int = 7,
                       delay_days: int = SIMULATOR_DELAY_DAYS,
                       promote: bool | None = None) -> dict[str, Any]:
    """Judge (``lift``), then train on the latest fully labelled days and register; promote when
    asked or when nothing serves yet."""
    window = split_days(frame, warmup_days=warmup_days, test_days=test_days,
                        delay_days=delay_days)
    judged = lift(frame, window)
    last = frame[TIME].max().date()
    end = last - timedelta(days=delay_days - 1)  # exclusive: labels of earlier days are known
    span = window.train_end - window.train_start + timedelta(days=1)
    start = max(frame[TIME].min().date() + timedelta(days=warmup_days), end - span)
    model = train_model(frame, start, end, feature_cols=features.feature_names("gateway"),
                        params=DEFAULT_CHOICE)
    day = frame[TIME].dt.floor("D")
    rows = frame[(day >= pd.Timestamp(start)) & (day < pd.Timestamp(end))]
    metrics = {"out_of_time": {k: judged["with"][k] for k in
                               ("auc_roc", "average_precision", "card_precision_at_100")},
               "judged_on": judged["with"]["test"],
               "without_merchant_features": {"average_precision":
                                             judged["without"]["average_precision"]}}
    version = registry.register(model, rows, metrics=metrics, notes=notes, source=source)
    if promote or (promote is None and registry.champion_version() is None):
        registry.promote(version)
    return {"version": version, "source": source, "training_window": [str(start), str(end)],
            "rows": model.rows, "frauds": model.frauds, "lift": judged,
            "champion": registry.champion_version()}
