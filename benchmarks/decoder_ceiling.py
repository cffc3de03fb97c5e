"""The decoder's ceiling: the evaluation ConvNet trained on every training image after encode -> decode, against the
same net trained on the raw images; test accuracy on the real test split for both.

A distilled latent set can only be as good as the images its decoder can draw: training on all 60,000 decoded images
is the most any latent set of this backbone could teach the network (at this training length). The training is the
standard protocol's (`gendistill.evaluate.train_and_test`: SGD lr 0.01, momentum 0.9, batch 256, lr x0.1 at half,
DSA augmentation), only shorter: a few epochs over 60,000 images instead of hundreds over a small set.

    python benchmarks/decoder_ceiling.py [--backbone fashion-mnist-vae] [--epochs 3] [--runs 1] [--out ceiling.json]
        [--latent-dtype int4] [--only decoded|raw]

``--latent-dtype`` stores every code as a set of that dtype would (int4/int8: per-channel scale and zero point fitted to
all the codes; sq4: 16 levels per channel fitted to all the codes; vq8/vq4: one codebook fitted to all their vectors)
before decoding, so the figure bounds the sets of that storage class. ``--only`` trains one of the two, so that the two
can run side by side as separate processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict

import torch

from gendistill.backbones import load_backbone
from gendistill.data import get_dataset
from gendistill.evaluate import EvalConfig, psnr, reconstruct, train_and_test
from gendistill.io import write_json
from gendistill.storage import get_codec


def _progress(what: str, epochs: int, t0: float):
    """A line on stderr after each epoch: a run of 60,000 images takes minutes an epoch on a CPU."""
    def report(done: int) -> None:
        print(f"{what}: epoch {done}/{epochs} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="fashion-mnist-vae")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (a quick check)")
    p.add_argument("--no-raw", action="store_true",
                   help="train on the decoded images only (the raw figure does not depend on the backbone)")
    p.add_argument("--only", choices=("decoded", "raw"), default=None,
                   help="train on these images only (--only decoded is --no-raw)")
    p.add_argument("--latent-dtype", default="float32",
                   help="store the codes in this dtype before decoding (float32, int8, int4, vq8, ...)")
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    try:
        codec = get_codec(args.latent_dtype)
    except ValueError as e:
        p.error(str(e))
    which = [args.only] if args.only else ["decoded"] if args.no_raw else ["decoded", "raw"]
    train, test = get_dataset(args.dataset, "train"), get_dataset(args.dataset, "test")
    n = min(len(train), args.limit or len(train))
    raw = train.float_images(slice(0, n))
    labels = train.labels[:n].clone()
    backbone = load_backbone(args.backbone, image_shape=train.image_shape)
    start = time.time()
    decoded = reconstruct(backbone, raw, codec=codec) if "decoded" in which else None
    recon_seconds = time.time() - start
    cfg = EvalConfig(epochs=args.epochs, runs=args.runs)
    result = {"backbone": args.backbone, "latent_shape": list(backbone.latent_shape), "latent_dtype": codec.name,
              "images": n, "psnr_db": None if decoded is None else round(psnr(decoded, raw), 2),
              "settings": asdict(cfg), "reconstruct_seconds": round(recon_seconds, 1)}
    for name, images in (("decoded", decoded), ("raw", raw)):
        if name not in which:
            continue
        accs, t0 = [], time.time()
        for run in range(args.runs):
            g = torch.Generator().manual_seed(run)
            accs.append(train_and_test(images, labels, test, cfg, g, torch.device("cpu"), test.mean, test.std,
                                       on_epoch=_progress(f"{name} run {run + 1}/{args.runs}", args.epochs, t0)))
        result[name] = {"accs": accs, "mean": statistics.fmean(accs), "std": statistics.pstdev(accs),
                        "seconds": round(time.time() - t0, 1)}
        print(f"{name:8s} {n} training images, {args.epochs} epochs x {args.runs} runs: test accuracy "
              f"{100 * result[name]['mean']:.2f} +- {100 * result[name]['std']:.2f} % "
              f"({result[name]['seconds']:.0f} s)", flush=True)
    if len(which) == 1:
        return write_json(result, args.out) if args.out else None
    print(f"decoder ceiling ({args.backbone}, latents {tuple(backbone.latent_shape)} {codec.name}): "
          f"{100 * result['decoded']['mean']:.2f} % decoded vs {100 * result['raw']['mean']:.2f} % raw "
          f"({100 * (result['raw']['mean'] - result['decoded']['mean']):.2f} points)")
    if args.out:
        write_json(result, args.out)


if __name__ == "__main__":
    main()
