"""gradient matching (DC / DSA): the recipe lives in the library, gendistill/recipes/dc.py (`gendistill distill dc
--help`).

    accelerate launch recipes/latent_dc.py [--key value ...]  # the same as: accelerate launch -m gendistill distill dc
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.recipes.dc import LatentDCConfig, main, run  # noqa: F401  (re-exported for scripts and tests)

if __name__ == "__main__":
    sys.exit(run_guarded(main))
