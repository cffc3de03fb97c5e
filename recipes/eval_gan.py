"""Measure a generator backbone's class consistency (gan or diffusion): a fixed ConvNet trained on the real train split
classifies real test images and ``--per-class`` generated images of every class; the within-class spread (mean RMS
distance between two images of a class) of generated vs real test images, which is near 0 for a mode-collapsed
generator; optionally inverts ``--invert`` test images (PSNR of their reconstructions).

    python recipes/eval_gan.py --backbone fashion-mnist-gan
    python recipes/eval_gan.py --backbone my-gan --classifier classifier.safetensors   # train once, then reuse
    python recipes/eval_gan.py --backbone fashion-mnist-ldm --guidance-scale 2        # a latent diffusion model

Prints a JSON line, then a summary line; ``--out`` writes the JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator

from gendistill.backbones import backbone_options, load_backbone
from gendistill.cli import run_guarded
from gendistill.config import Checked, parse_config, setting
from gendistill.data import DataConfig, load_split
from gendistill.evaluate import classify, psnr, reference_classifier, within_class_spread
from gendistill.io import write_json


@dataclass
class EvalGANConfig(DataConfig, Checked):
    backbone: str = "fashion-mnist-gan"
    per_class: int = setting(1000, min=1)  # generated images per class
    # safetensors of the classifier's weights: loaded if it exists, else trained and written
    classifier: str | None = None
    classifier_epochs: int = setting(2, min=1)
    invert: int = setting(100, min=0)  # test images to invert (w+ unless --latent-space); 0: skip
    latent_space: str | None = None
    decode_steps: int | None = None  # diffusion backbones: DDIM steps (None: 10)
    invert_to: int | None = None  # diffusion: timestep of the noise latents (None: full noise)
    guidance_scale: float | None = None  # diffusion: classifier-free guidance (None: 1, none)
    prompt_template: str | None = None  # text-conditioned diffusion
    seed: int = setting(0, min=0)
    out: str | None = None


def main(argv=None) -> int:
    cfg = parse_config(EvalGANConfig, argv, __doc__)
    device = Accelerator().device
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    backbone = load_backbone(cfg.backbone, image_shape=test.image_shape, latent_space=cfg.latent_space,
                             options=backbone_options(cfg), class_names=train.classes).to(device)
    if not hasattr(backbone, "sample_images"):
        raise ValueError(f"{cfg.backbone!r} is a {backbone.kind} backbone; recipes/eval_gan.py measures generator "
                         "backbones (gan, diffusion; recipes/eval_autoencoder.py the others)")
    net = reference_classifier(train, device, cfg.classifier, epochs=cfg.classifier_epochs, seed=cfg.seed)
    acc_real = (classify(net, test.float_images(), test.mean, test.std, device) == test.labels).float().mean().item()
    labels = torch.arange(train.num_classes).repeat_interleave(cfg.per_class)
    images = backbone.sample_images(labels, torch.Generator().manual_seed(cfg.seed)).clamp(0, 1)
    hit = (classify(net, images, test.mean, test.std, device) == labels).float()
    per_class = [round(hit[labels == c].mean().item(), 4) for c in range(train.num_classes)]
    spread_gen = within_class_spread(images.cpu(), labels)
    spread_real = within_class_spread(test.float_images(), test.labels)
    spread_ratio = sum(g / r for g, r in zip(spread_gen, spread_real)) / len(spread_real)
    result = {"backbone": cfg.backbone, "sha256": backbone.weights_sha256(),
              "classifier_acc_real_test": round(acc_real, 4), "classifier_acc_generated": round(hit.mean().item(), 4),
              "classifier_acc_generated_per_class": per_class,
              "within_class_spread_generated": [round(v, 4) for v in spread_gen],
              "within_class_spread_real": [round(v, 4) for v in spread_real], "spread_ratio": round(spread_ratio, 4),
              "classes": list(train.classes), "generated_per_class": cfg.per_class, "config": asdict(cfg)}
    if cfg.invert > 0:
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(test), generator=g)[: cfg.invert]
        real = test.float_images(idx)
        z = backbone.encode(real.to(device), labels=test.labels[idx])
        with torch.no_grad():
            recon = backbone.decode(z).float().clamp(0, 1).cpu()
        acc_inv = (classify(net, recon, test.mean, test.std, device) == test.labels[idx]).float().mean().item()
        result["inversion"] = {"latent_space": backbone.latent_space, "images": len(idx),
                               "steps": getattr(backbone, "invert_steps", None), "options": backbone.options(),
                               "psnr_db": round(psnr(recon, real), 2), "classifier_acc": round(acc_inv, 4)}
    if cfg.out:
        write_json(result, cfg.out)
    print(json.dumps(result))
    inv = (
        f"; inversion ({backbone.latent_space or backbone.kind}) PSNR {result['inversion']['psnr_db']:.2f} dB"
        if "inversion" in result
        else ""
    )
    print(f"class consistency: classifier accuracy {100 * hit.mean().item():.2f}% on generated images (per class "
          f"{min(per_class) * 100:.1f}-{max(per_class) * 100:.1f}%) vs {100 * acc_real:.2f}% on real test images; "
          f"within-class spread {spread_ratio:.2f} x the real images'{inv}")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
