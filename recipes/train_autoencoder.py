"""Train a small AutoencoderKL backbone for a dataset and save it in diffusers layout.

    python recipes/train_autoencoder.py --dataset fashion-mnist --output assets/backbones/fashion-mnist-vae
    python recipes/train_autoencoder.py --dataset imagefolder --data-dir DIR --output my-vae --epochs 20
"""

from __future__ import annotations

import sys

from accelerate import Accelerator

from gendistill.backbones.train import AutoencoderConfig, train_autoencoder
from gendistill.backbones.training import checkpoint_path, resumable, save_trained
from gendistill.cli import run_guarded
from gendistill.config import backbone_training_parser, config_from_args
from gendistill.data import get_dataset


def parse(argv=None):
    return backbone_training_parser(AutoencoderConfig, __doc__).parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cfg = config_from_args(AutoencoderConfig, args)
    ckpt = checkpoint_path(args.output)
    train = get_dataset(args.dataset, "train", args.data_dir, args.download)
    with resumable(ckpt):
        backbone = train_autoencoder(train, cfg, device=Accelerator().device, checkpoint=ckpt, resume=args.resume)
    save_trained(backbone, train, cfg, args.output, "recipes/train_autoencoder.py")
    print(f"saved {args.output} (sha256 {backbone.weights_sha256()[:16]}, latent shape {backbone.latent_shape})")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
