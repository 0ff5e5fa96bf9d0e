"""`python -m streams.tools.offline_evaluate chapter5`: a handbook protocol, trained and scored

The protocols live in the pure core (``scoring.train``), which knows nothing of this deployment;
this command hands it where the handbook data, the feature cache and the curves are kept here.
"""

from __future__ import annotations

from scoring.train import main
from streams.config import HANDBOOK_DIR, Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    raise SystemExit(main(data_dir=HANDBOOK_DIR, cache_dir=settings.features_cache,
                          curves_dir=settings.home / "reports"))
