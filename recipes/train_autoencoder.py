"""Train a small AutoencoderKL backbone for a dataset and save it in diffusers layout.

    python recipes/train_autoencoder.py --dataset fashion-mnist --output gendistill/assets/backbones/fashion-mnist-vae
    python recipes/train_autoencoder.py --dataset imagefolder --data-dir DIR --output my-vae --epochs 20

The same as ``gendistill train-backbone --kind vae``; the trainer is gendistill/training/vae.py.
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.training import train_backbone


def main(argv=None) -> int:
    return train_backbone("vae", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
