"""The gateways' static route weights per issuer: what the Pilot shifts from and restores to.

A JSON file, ``{issuer: {route: weight}}``, written by whoever configures the gateways (the
simulator, in the demo) and read by the worker at start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def load_baseline(path: Path) -> dict[str, dict[str, float]]:
    """The gateways' static route weights per issuer: what the Pilot measures shifts from and
    restores to. Missing file: no baseline, and the Pilot refuses every move (unknown_cell)."""
    if not path.exists():
        log.warning("no routing baseline at %s: the Pilot will refuse every move", path)
        return {}
    raw = json.loads(path.read_text())
    return {str(i): {str(r): float(w) for r, w in ws.items()} for i, ws in raw.items()}


def write_baseline(path: Path, weights: Mapping[str, Mapping[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({i: dict(ws) for i, ws in weights.items()}, indent=1))
