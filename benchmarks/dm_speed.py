"""Seconds per distillation iteration: latent-space DM (shipped VAE) vs pixel-space DM, measured in one run.

Same IPC, same real batch per class, same proxy-net family (ConvNet, depth 3, width 128, instance norm; on
4x7x7 latents it pools 7 -> 3 -> 1, on 28x28 images 28 -> 14 -> 7 -> 3), same optimiser, same augmentation
policy for its space. Timed with the real training loop (`gendistill.distill.distill`), warm-up excluded.

    python benchmarks/dm_speed.py [--ipc 10] [--batch-real 256] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from gendistill.backbones import load_backbone
from gendistill.cache import LatentSplit, encode_images
from gendistill.data import ImageDataset, get_dataset
from gendistill.distill import DistillConfig, distill, make_accelerator
from gendistill.objectives import get_objective
from gendistill.synthetic import SyntheticSet


def per_class_subset(train: ImageDataset, n: int, gen: torch.Generator) -> ImageDataset:
    idx = torch.cat([train.sample_class(c, n, gen) for c in range(train.num_classes)])
    return ImageDataset(train.name, "train", train.images[idx].clone(), train.labels[idx].clone(), train.classes,
                        train.mean, train.std)


def seconds_per_step(backbone, real: LatentSplit, real_latents: LatentSplit, args, accelerator, meta) -> float:
    gen = torch.Generator().manual_seed(0)
    times = []
    for steps in (args.warmup, args.warmup + args.steps):
        syn = SyntheticSet.initialise("real", real_latents, args.ipc, backbone, meta, gen)
        cfg = DistillConfig(steps=steps, batch_real=args.batch_real, match_space="latent", log_every=10**9)
        start = time.perf_counter()
        distill(syn, get_objective("dm"), backbone, real, cfg, accelerator, meta)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / args.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backbone", default="fashion-mnist-vae")
    args = p.parse_args()
    accelerator = make_accelerator("no")
    train = per_class_subset(get_dataset("fashion-mnist", "train"), max(args.batch_real, args.ipc),
                             torch.Generator().manual_seed(0))
    meta = train.meta()
    images = LatentSplit(train.float_images(), train.labels.clone(), train.num_classes)

    vae = load_backbone(args.backbone, image_shape=train.image_shape).to(accelerator.device)
    latents = LatentSplit(encode_images(vae, train), train.labels.clone(), train.num_classes)
    pixel = load_backbone("pixel", image_shape=train.image_shape)

    t_latent = seconds_per_step(vae, latents, latents, args, accelerator, meta)
    t_pixel = seconds_per_step(pixel, images, images, args, accelerator, meta)
    print(f"device {accelerator.device}, torch threads {torch.get_num_threads()}, ipc {args.ipc}, "
          f"real batch {args.batch_real}/class, {args.steps} timed steps")
    print(f"latent DM ({tuple(vae.latent_shape)} latents): {t_latent * 1000:.1f} ms/iteration")
    print(f"pixel DM  ({tuple(train.image_shape)} images):  {t_pixel * 1000:.1f} ms/iteration")
    print(f"latent DM is {t_pixel / t_latent:.1f}x faster per iteration than pixel DM")


if __name__ == "__main__":
    main()
