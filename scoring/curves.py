"""ROC and precision-recall curves as PNG files, for reports a reader can look at.

matplotlib is imported here only, lazily, with the file-only Agg backend: training and the worker
never need it, and a machine without a display can still draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scoring.metrics import auc_roc, average_precision


def roc_points(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]
               ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(false positive rate, true positive rate) at every distinct score threshold."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = last + 1 - tp
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def pr_points(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]
              ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(recall, precision) at every distinct score threshold."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last]
    return tp / max(tp[-1], 1), tp / (last + 1)


def save_curves(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], out_dir: Path,
                title: str, *, prefix: str = "model") -> tuple[Path, Path]:
    """Write ``<prefix>-roc.png`` and ``<prefix>-pr.png`` into out_dir; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_path, pr_path = out_dir / f"{prefix}-roc.png", out_dir / f"{prefix}-pr.png"

    fpr, tpr = roc_points(y, s)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC ROC {auc_roc(y, s):.3f}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.savefig(roc_path, dpi=100, bbox_inches="tight")
    plt.close(fig)

    recall, precision = pr_points(y, s)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.step(recall, precision, where="post", label=f"AP {average_precision(y, s):.3f}")
    ax.axhline(y.mean(), linestyle=":", color="grey", label=f"fraud rate {y.mean():.4f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right")
    fig.savefig(pr_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return roc_path, pr_path
