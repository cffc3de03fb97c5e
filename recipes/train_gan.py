"""Train the small class-conditional GAN backbone for a dataset and save it in diffusers layout.

    python recipes/train_gan.py --dataset fashion-mnist --output gendistill/assets/backbones/fashion-mnist-gan
    python recipes/train_gan.py --output my-gan --epochs 10 --channels 128 64 32

The directory holds the EMA generator (config.json + safetensors, a ConditionalStyleGenerator), gendistill.json
(kind, image shape, latent spaces, training config) and samples.png (one row per class). Use it with
``--backbone DIR --latent-space w+ --match-space pixel`` in any distillation recipe; judge it with recipes/eval_gan.py.
The same as ``gendistill train-backbone --kind gan``; the trainer is gendistill/training/gan.py.
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.training import train_backbone


def main(argv=None) -> int:
    return train_backbone("gan", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
