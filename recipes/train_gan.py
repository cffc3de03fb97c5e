"""Train the small class-conditional GAN backbone for a dataset and save it in diffusers layout.

    python recipes/train_gan.py --dataset fashion-mnist --output assets/backbones/fashion-mnist-gan
    python recipes/train_gan.py --output my-gan --epochs 10 --channels 128 64 32

The directory holds the EMA generator (config.json + safetensors, a ConditionalStyleGenerator), gendistill.json
(kind, image shape, latent spaces, training config) and samples.png (one row per class). Use it with
``--backbone DIR --latent-space w+ --match-space pixel`` in any distillation recipe; judge it with recipes/eval_gan.py.
"""

from __future__ import annotations

import sys

from accelerate import Accelerator

from gendistill.backbones.train_gan import GANConfig, train_gan
from gendistill.backbones.training import checkpoint_path, resumable, save_trained
from gendistill.cli import run_guarded
from gendistill.config import backbone_training_parser, config_from_args
from gendistill.data import get_dataset


def parse(argv=None):
    p = backbone_training_parser(GANConfig, __doc__)
    p.add_argument("--samples-per-class", type=int, default=10, help="rows of samples.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cfg = config_from_args(GANConfig, args)
    ckpt = checkpoint_path(args.output)
    train = get_dataset(args.dataset, "train", args.data_dir, args.download)
    with resumable(ckpt):
        backbone = train_gan(train, cfg, device=Accelerator().device, checkpoint=ckpt, resume=args.resume)
    save_trained(backbone, train, cfg, args.output, "recipes/train_gan.py", samples_per_class=args.samples_per_class, seed=cfg.seed)
    mb = sum(p.numel() * p.element_size() for p in backbone.generator.parameters()) / 2**20
    print(f"saved {args.output} (sha256 {backbone.weights_sha256()[:16]}, {mb:.2f} MB of weights, latent spaces {', '.join(backbone.latent_spaces)})")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
