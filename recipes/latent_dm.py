"""distribution matching (DM + LatentDD): the recipe lives in the library, gendistill/recipes/dm.py (`gendistill distill
dm --help`).

    accelerate launch recipes/latent_dm.py [--key value ...]  # the same as: accelerate launch -m gendistill distill dm
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.recipes.dm import LatentDMConfig, main, run  # noqa: F401  (re-exported for scripts and tests)

if __name__ == "__main__":
    sys.exit(run_guarded(main))
