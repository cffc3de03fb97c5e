"""Train the small class-conditional latent diffusion model on a VAE backbone's latents and save it in diffusers layout.

    # Fashion-MNIST, shipped VAE
    python recipes/train_diffusion.py --output gendistill/assets/backbones/fashion-mnist-ldm
    python recipes/train_diffusion.py --output my-ldm --vae my-vae --epochs 20 --block-out-channels 64 128 128

The directory holds unet/ (the EMA UNet2DModel, class embeddings + a null class), scheduler/ (DDIMScheduler),
gendistill.json (kind "diffusion", classes, the VAE pointer and its sha256, the training config) and samples.png (one
row per class, default decode settings). Use it with ``--backbone DIR --match-space pixel`` in any distillation
recipe, or as ``--init diffusion --init-model DIR``; judge its class consistency with recipes/eval_gan.py --backbone
DIR. The same as ``gendistill train-backbone --kind diffusion``; the trainer is gendistill/training/diffusion.py.
"""

from __future__ import annotations

import sys

from gendistill.cli import run_guarded
from gendistill.training import train_backbone


def main(argv=None) -> int:
    return train_backbone("diffusion", argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
