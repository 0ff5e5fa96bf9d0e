"""A file-based model registry: versions, champion and challenger, rollback.

Files, not a service, because the worker only needs to read one model at start and an ML engineer
must be able to see and diff what is deployed. Layout under the root the caller names::

    1.0.0/model.txt       LightGBM model text (loads in milliseconds)
    1.0.0/meta.json       features in order, training window, data hash, metrics, params, the
                          per-feature and score baseline distributions (for drift / PSI), shadow
    registry.json         {"champion", "previous", "challenger", "challenger_share"}

A version directory is written under a temporary name and renamed into place, and the pointer
file is replaced atomically, so a worker starting mid-registration sees the old state or the new
one, never half of either. Versions are never deleted: the previous champions stay for rollback.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from scoring.drift import SCORE, Baseline

if TYPE_CHECKING:
    import pandas as pd

    from scoring.train import TrainedModel

POINTER = "registry.json"
# Quantile levels of the baseline bins: deciles, plus a finer upper tail because fraud scores and
# amounts drift first where the mass is thin.
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
ARMS = ("champion", "challenger")


def _key(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(part) for part in version.split("."))
    return major, minor, patch


def _bump(version: str, part: str) -> str:
    major, minor, patch = _key(version)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"bump must be major, minor or patch, not {part!r}")


def distribution(values: npt.ArrayLike) -> dict[str, list[float]]:
    """Bin edges at the ``QUANTILES`` (duplicates merged) and the share of values in each bin.

    Bins are (-inf, e0], (e0, e1], ..., (ek, inf), so there is one more proportion than edges.
    A constant feature gets one edge and all its mass in the first bin.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"edges": [], "proportions": [1.0]}
    edges = np.unique(np.quantile(v, QUANTILES))
    return {"edges": edges.tolist(), "proportions": proportions(edges.tolist(), v)}


def proportions(edges: Sequence[float], values: npt.ArrayLike) -> list[float]:
    """Share of ``values`` in each bin of ``edges`` (see ``distribution``)."""
    v = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(np.asarray(edges), v, side="left"),
                         minlength=len(edges) + 1)
    shares: list[float] = (counts / max(len(v), 1)).tolist()
    return shares


def psi(baseline: Mapping[str, Sequence[float]], values: npt.ArrayLike,
        floor: float = 1e-4) -> float:
    """Population stability index of ``values`` against a stored baseline distribution."""
    expected = np.maximum(np.asarray(baseline["proportions"]), floor)
    actual = np.maximum(np.asarray(proportions(baseline["edges"], values)), floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_baselines(meta: Mapping[str, Any]) -> dict[str, Baseline]:
    """A registered model's training distributions as drift baselines, per feature and for the
    score (under the evaluator's SCORE name)."""
    found = {name: Baseline(name, tuple(b["edges"]), tuple(b["proportions"]))
             for name, b in meta.get("feature_baselines", {}).items()}
    score = meta.get("score_baseline")
    if score:
        found[SCORE] = Baseline(SCORE, tuple(score["edges"]), tuple(score["proportions"]))
    return found


@dataclass(frozen=True)
class LoadedModel:
    """A registered model ready to score: the booster and what it was registered with."""

    version: str
    booster: lgb.Booster
    meta: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def shadow(self) -> bool:
        return bool(self.meta.get("shadow", False))

    def predict_one(self, row: Mapping[str, float]) -> float:
        """Fraud probability of one transaction's features (taken by name; a missing one fails)."""
        x = np.array([[row[name] for name in self.meta["feature_names"]]], dtype=np.float64)
        return float(self.booster.predict(x)[0])

    def predict(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        matrix = frame[self.feature_names].to_numpy(dtype=np.float64)
        return np.asarray(self.booster.predict(matrix), dtype=np.float64)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


class ModelRegistry:
    """Registered versions under one directory, and which of them serve."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- versions ------------------------------------------------------------------------------

    def list_versions(self) -> list[str]:
        """Every registered version, oldest first (semantic-version order)."""
        found = []
        for path in self.root.iterdir():
            if path.is_dir() and (path / "meta.json").exists():
                try:
                    _key(path.name)
                except ValueError:
                    continue
                found.append(path.name)
        return sorted(found, key=_key)

    def register(self, model: TrainedModel, train_frame: pd.DataFrame, *,
                 metrics: Mapping[str, Any] | None = None, bump: str | None = None,
                 shadow: bool = False, notes: str = "", source: str = "handbook") -> str:
        """Store ``model`` as the next version and return it; it serves nowhere until promoted.

        ``train_frame``: the rows it was trained on, for the baseline distributions of each
        feature and of the score. The version starts at 1.0.0; a changed feature list bumps the
        minor part (the input contract changed), anything else the patch part, unless ``bump``
        says otherwise. ``source`` names the traffic it was trained on ("handbook",
        "simulator", ...): a model serves best the kind it learned from, and the demo looks for
        its own.
        """
        existing = self.list_versions()
        if not existing:
            version = "1.0.0"
        else:
            latest = existing[-1]
            same_inputs = self.meta(latest)["feature_names"] == list(model.feature_names)
            version = _bump(latest, bump or ("patch" if same_inputs else "minor"))
        scores = model.predict(train_frame)
        meta = {
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "feature_names": list(model.feature_names),
            "training_window": {"start": model.train_start, "end": model.train_end,
                                "end_exclusive": True},
            "training_data_hash": model.data_hash,
            "training_rows": model.rows,
            "training_frauds": model.frauds,
            "params": model.params,
            "metrics": dict(metrics or model.metrics),
            "feature_baselines": {name: distribution(train_frame[name].to_numpy())
                                  for name in model.feature_names},
            "score_baseline": distribution(scores),
            "shadow": bool(shadow),
            "notes": notes,
            "source": source,
        }
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{version}."))
        model.booster.save_model(str(staging / "model.txt"))
        text = (staging / "model.txt").read_bytes()
        meta["model_sha256"] = hashlib.sha256(text).hexdigest()
        _write_json(staging / "meta.json", meta)
        while True:
            try:
                staging.rename(self.root / version)  # fails if another writer took the number
                return version
            except OSError:
                version = _bump(version, "patch")
                meta["version"] = version
                _write_json(staging / "meta.json", meta)

    def meta(self, version: str) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.root / version / "meta.json").read_text())
        return meta

    def load(self, version: str) -> LoadedModel:
        """The booster and metadata of ``version``, checked against the stored hash."""
        meta = self.meta(version)
        text = (self.root / version / "model.txt").read_text()
        if hashlib.sha256(text.encode()).hexdigest() != meta["model_sha256"]:
            raise ValueError(f"model {version} does not match its recorded sha256")
        return LoadedModel(version, lgb.Booster(model_str=text), meta)

    def set_shadow(self, version: str, shadow: bool) -> None:
        """Mark a version as shadow: it is scored alongside, its verdicts never decide."""
        meta = self.meta(version)
        meta["shadow"] = bool(shadow)
        _write_json(self.root / version / "meta.json", meta)

    # -- who serves ----------------------------------------------------------------------------

    def _pointer(self) -> dict[str, Any]:
        path = self.root / POINTER
        if not path.exists():
            return {"champion": None, "previous": [], "challenger": None,
                    "challenger_share": 0.0}
        pointer: dict[str, Any] = json.loads(path.read_text())
        return pointer

    def _require(self, version: str) -> None:
        if version not in self.list_versions():
            raise KeyError(f"no model version {version} in {self.root}")

    def champion_version(self) -> str | None:
        version: str | None = self._pointer()["champion"]
        return version

    def challenger_version(self) -> str | None:
        version: str | None = self._pointer()["challenger"]
        return version

    def champion(self) -> LoadedModel | None:
        version = self.champion_version()
        return self.load(version) if version else None

    def challenger(self) -> LoadedModel | None:
        version = self.challenger_version()
        return self.load(version) if version else None

    def promote(self, version: str) -> None:
        """Make ``version`` the champion; the one it replaces is kept first in line for rollback."""
        self._require(version)
        pointer = self._pointer()
        if pointer["champion"] == version:
            return
        if pointer["champion"]:
            pointer["previous"] = [pointer["champion"], *pointer["previous"]]
        pointer["champion"] = version
        if pointer["challenger"] == version:
            pointer["challenger"], pointer["challenger_share"] = None, 0.0
        _write_json(self.root / POINTER, pointer)

    def rollback(self) -> str:
        """Reinstate the previous champion and return its version."""
        pointer = self._pointer()
        if not pointer["previous"]:
            raise LookupError("no previous champion to roll back to")
        pointer["champion"], *pointer["previous"] = pointer["previous"]
        _write_json(self.root / POINTER, pointer)
        return str(pointer["champion"])

    def set_challenger(self, version: str | None, share: float = 0.1) -> None:
        """Let ``version`` decide for ``share`` of cards (None removes the challenger).

        A shadow challenger (``set_shadow``) gets no share of decisions whatever ``share`` says.
        """
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be within [0, 1]")
        pointer = self._pointer()
        if version is not None:
            self._require(version)
        pointer["challenger"] = version
        pointer["challenger_share"] = share if version is not None else 0.0
        _write_json(self.root / POINTER, pointer)

    def serving(self) -> Serving:
        """Champion and challenger loaded once, with the split: what a worker holds at start."""
        pointer = self._pointer()
        champion = self.load(pointer["champion"]) if pointer["champion"] else None
        challenger = self.load(pointer["challenger"]) if pointer["challenger"] else None
        return Serving(champion, challenger, float(pointer["challenger_share"]))


@dataclass(frozen=True)
class Serving:
    """Which loaded model decides for a card, and which only score alongside (shadow)."""

    champion: LoadedModel | None
    challenger: LoadedModel | None
    challenger_share: float

    def arm(self, card_token: str) -> str:
        """"champion" or "challenger": which model decides for this card.

        A hash of the card token, so a card stays with one model (its verdicts stay consistent)
        and every worker makes the same split without sharing state. A shadow challenger never
        decides.
        """
        if self.challenger is None or self.challenger.shadow:
            return "champion"
        return "challenger" if in_share(card_token, self.challenger_share) else "champion"

    def decider(self, card_token: str) -> LoadedModel | None:
        return self.challenger if self.arm(card_token) == "challenger" else self.champion

    def shadows(self) -> list[LoadedModel]:
        """Models to score every transaction with, for comparison only."""
        return [self.challenger] if self.challenger is not None and self.challenger.shadow else []


def in_share(card_token: str, share: float) -> bool:
    """Whether the card falls in the first ``share`` of the hash space (stable across processes)."""
    digest = hashlib.sha256(card_token.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share
