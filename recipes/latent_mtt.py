"""trajectory matching (MTT / TESLA / DATM): the recipe lives in the library, gendistill/recipes/mtt.py (`gendistill
distill mtt --help`).

    # the same as: accelerate launch -m gendistill distill mtt
    accelerate launch recipes/latent_mtt.py [--key value ...]
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.recipes.mtt import LatentMTTConfig, main, run  # noqa: F401  (re-exported for scripts and tests)

if __name__ == "__main__":
    sys.exit(run_guarded(main))
