"""What each latent storage dtype keeps of the images: real test images encoded by a backbone, their latents written
in each dtype and read back (as a set file holds them: int8/int4 scales, sq4 levels and vq codebooks fitted to these
latents), then decoded. Prints, per dtype, the bytes of one latent, how many fit per class at budgets 1 and 10, the
latents' relative squared error, and the decoded images' mean PSNR against the real images and against the float32
decoding.

    python benchmarks/vq_fidelity.py [--backbone fashion-mnist-vae] [--images 2000] [--out fidelity.json]

The PSNR is per image (peak 1.0, images in [0, 1]) and averaged over the images, as docs/backbones.md reports a
backbone's reconstruction.
"""

from __future__ import annotations

import argparse

import torch

from gendistill.backbones import load_backbone
from gendistill.data import get_dataset
from gendistill.io import write_json
from gendistill.storage import get_codec, latents_per_class

DTYPES = ("float32", "float16", "int8", "int4", "sq4", "vq8", "vq4")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE) (images in [0, 1])."""
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-12)
    return float((-10 * mse.log10()).mean())


def decode(backbone, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([backbone.decode(z[i : i + batch]).float().clamp(0, 1) for i in range(0, len(z), batch)])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="fashion-mnist-vae")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--images", type=int, default=2000, help="the first N test images")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    test = get_dataset(args.dataset, "test")
    n = min(args.images, len(test))
    x = test.float_images(slice(0, n))
    backbone = load_backbone(args.backbone, image_shape=test.image_shape).eval()
    with torch.no_grad():
        z = torch.cat([backbone.encode(x[i : i + 500]) for i in range(0, n, 500)]).float()
    full = decode(backbone, z)
    shape, classes = tuple(z.shape[1:]), test.num_classes
    rows = []
    for name in args.dtypes:
        codec = get_codec(name)
        back = codec.decode(codec.encode(z))
        images = decode(backbone, back)
        row = {"dtype": name, "latent_bytes": codec.latent_bytes(shape),
               "set_overhead_bytes": codec.overhead_bytes(shape),
               "per_class_budget1": latents_per_class(1, shape, test.image_shape, classes, name),
               "per_class_budget10": latents_per_class(10, shape, test.image_shape, classes, name),
               "latent_rel_sq_error": float((back - z).square().sum() / z.square().sum()),
               "psnr_vs_real": psnr(images, x),
               "psnr_vs_float32": psnr(images, full) if name != "float32" else None}
        rows.append(row)
        vs = "-" if row["psnr_vs_float32"] is None else f"{row['psnr_vs_float32']:.2f} dB"
        print(f"{name:8s} {row['latent_bytes']:5d} B a latent (+{row['set_overhead_bytes']:,} B a set), "
              f"{row['per_class_budget1']:4d} / {row['per_class_budget10']:5d} per class at budget 1 / 10; "
              f"latent error {100 * row['latent_rel_sq_error']:.3g}%; PSNR vs real {row['psnr_vs_real']:.2f} dB, "
              f"vs float32 decoding {vs}", flush=True)
    result = {"backbone": args.backbone, "dataset": args.dataset, "images": n, "latent_shape": list(shape),
              "rows": rows}
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
