"""Training a model for production and moving it through the registry, as commands do it.

A production model is trained on the most recent week whose labels are all known (the week that
ends one label delay before the data does) with the protocol's default parameters. Before it is
registered it is judged the way the handbook judges: the same recipe one fold earlier (train on
the week before, skip the delay, test on the following week), so the registry's metrics are an
honest out-of-time estimate, never the model's own training data.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from scoring import dataset
from scoring.registry import ModelRegistry
from scoring.train import (
    DEFAULT_CHOICE,
    DELTA_DELAY,
    DELTA_TRAIN,
    TIME,
    handbook_split,
    judge,
    train_model,
)


def latest_window(frame: pd.DataFrame) -> tuple[date, date]:
    """[start, end) of the newest full week whose labels are known by the data's last day."""
    last_day: date = frame[TIME].max().date()
    end = last_day - timedelta(days=DELTA_DELAY) + timedelta(days=1)
    return end - timedelta(days=DELTA_TRAIN), end


def train_and_register(data_dir: Path, cache_dir: Path, registry: ModelRegistry, *,
                       start: date | None = None, end: date | None = None,
                       promote: bool | None = None,
                       params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, judge one fold earlier, register; promote when asked or when nothing serves yet.

    The handbook data is read from ``data_dir``, its features cached under ``cache_dir``.
    """
    frame = dataset.offline_features(data_dir, cache_dir)
    if start is None or end is None:
        start, end = latest_window(frame)
    choice = {**DEFAULT_CHOICE, **(params or {})}
    judged_start = start - timedelta(days=DELTA_TRAIN + DELTA_DELAY)
    earlier = train_model(frame, judged_start, judged_start + timedelta(days=DELTA_TRAIN),
                          params=choice)
    _, test = handbook_split(frame, judged_start)
    metrics = {"out_of_time": judge(test, earlier.predict(test)),
               "judged_on": [str(test[TIME].min().date()), str(test[TIME].max().date())]}
    model = train_model(frame, start, end, params=choice)
    day = frame[TIME].dt.floor("D")
    window = frame[(day >= pd.Timestamp(start)) & (day < pd.Timestamp(end))]
    version = registry.register(model, window, metrics=metrics,
                                notes=f"handbook data {start}..{end - timedelta(days=1)}")
    if promote or (promote is None and registry.champion_version() is None):
        registry.promote(version)
    return {"version": version, "training_window": [str(start), str(end)],
            "rows": model.rows, "frauds": model.frauds, "metrics": metrics,
            "champion": registry.champion_version()}


def describe(registry: ModelRegistry) -> list[dict[str, Any]]:
    champion, challenger = registry.champion_version(), registry.challenger_version()
    rows = []
    for version in registry.list_versions():
        meta = registry.meta(version)
        role = ("champion" if version == champion else
                "challenger" if version == challenger else "")
        if meta.get("shadow"):
            role = (role + " shadow").strip()
        rows.append({"version": version, "role": role,
                     "window": meta["training_window"], "features": len(meta["feature_names"]),
                     "metrics": meta.get("metrics", {}), "created_at": meta.get("created_at")})
    return rows
