"""Train a small AutoencoderKL backbone for a dataset and save it in diffusers layout.

    python recipes/train_autoencoder.py --dataset fashion-mnist --output assets/backbones/fashion-mnist-vae
    python recipes/train_autoencoder.py --dataset imagefolder --data-dir DIR --output my-vae --epochs 20
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields

from accelerate import Accelerator

from gendistill.backbones.train import AutoencoderConfig, train_autoencoder
from gendistill.data import get_dataset, list_datasets
from gendistill.io import atomic_dir


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--output", required=True, help="directory to write (diffusers layout)")
    for f in fields(AutoencoderConfig):
        if f.name == "block_out_channels":
            p.add_argument("--block-out-channels", type=int, nargs="+", default=list(f.default))
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cfg = AutoencoderConfig(**{f.name: getattr(args, f.name) for f in fields(AutoencoderConfig)})
    cfg.block_out_channels = tuple(cfg.block_out_channels)
    try:
        train = get_dataset(args.dataset, "train", args.data_dir, args.download)
        backbone = train_autoencoder(train, cfg, device=Accelerator().device)
        with atomic_dir(args.output) as tmp:
            backbone.save_pretrained(tmp, extra={"dataset": train.meta(), "recipe": "recipes/train_autoencoder.py", "config": asdict(cfg)})
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved {args.output} (sha256 {backbone.weights_sha256()[:16]}, latent shape {backbone.latent_shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
