"""IT-GAN: the recipe lives in the library, gendistill/recipes/itgan.py (`gendistill distill itgan --help`).

    accelerate launch recipes/itgan.py [--key value ...]  # the same as: accelerate launch -m gendistill distill itgan
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.recipes.itgan import ITGANConfig, main, run  # noqa: F401  (re-exported for scripts and tests)

if __name__ == "__main__":
    sys.exit(run_guarded(main))
