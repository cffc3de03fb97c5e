"""Train the small class-conditional latent diffusion model on a VAE backbone's latents and save it in diffusers layout.

    python recipes/train_diffusion.py --output assets/backbones/fashion-mnist-ldm      # Fashion-MNIST, shipped VAE
    python recipes/train_diffusion.py --output my-ldm --vae my-vae --epochs 20 --block-out-channels 64 128 128

The directory holds unet/ (the EMA UNet2DModel, class embeddings + a null class), scheduler/ (DDIMScheduler),
gendistill.json (kind "diffusion", classes, the VAE pointer and its sha256, the training config) and samples.png (one
row per class, default decode settings). Use it with ``--backbone DIR --match-space pixel`` in any distillation
recipe, or as ``--init diffusion --init-model DIR``; judge its class consistency with recipes/eval_gan.py --backbone DIR.
"""

from __future__ import annotations

import sys

from accelerate import Accelerator

from gendistill.backbones.train_diffusion import DiffusionConfig, train_diffusion
from gendistill.backbones.training import checkpoint_path, resumable, save_trained
from gendistill.cli import run_guarded
from gendistill.config import backbone_training_parser, config_from_args
from gendistill.data import get_dataset


def parse(argv=None):
    p = backbone_training_parser(DiffusionConfig, __doc__)
    p.add_argument("--cache-dir", default=None, help="latent cache root (default ~/.cache/gendistill/latents)")
    p.add_argument("--samples-per-class", type=int, default=10, help="rows of samples.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cfg = config_from_args(DiffusionConfig, args)
    ckpt = checkpoint_path(args.output)
    train = get_dataset(args.dataset, "train", args.data_dir, args.download)
    with resumable(ckpt):
        backbone = train_diffusion(train, cfg, device=Accelerator().device, cache_dir=args.cache_dir, checkpoint=ckpt, resume=args.resume)
    save_trained(backbone, train, cfg, args.output, "recipes/train_diffusion.py", samples_per_class=args.samples_per_class, seed=cfg.seed)
    mb = sum(p.numel() * p.element_size() for p in backbone.unet.parameters()) / 2**20
    print(f"saved {args.output} (sha256 {backbone.weights_sha256()[:16]}, UNet {mb:.2f} MB, noise latent {backbone.noise_shape}, "
          f"VAE {cfg.vae} sha256 {backbone.vae.weights_sha256()[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
