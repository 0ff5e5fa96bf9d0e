"""`python -m streams.tools.reference_check`: the offline features against the handbook's own.

The check lives in the pure core (``scoring.dataset``), which knows nothing of this deployment;
this command hands it where the handbook data and the feature cache are kept here.
"""

from __future__ import annotations

from scoring.dataset import main
from streams.config import HANDBOOK_DIR, Settings

if __name__ == "__main__":
    raise SystemExit(main(data_dir=HANDBOOK_DIR, cache_dir=Settings.from_env().features_cache))
