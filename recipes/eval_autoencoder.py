"""Measure an autoencoder backbone: PSNR on the test split, and a fixed real-data classifier's accuracy on
real vs reconstructed test images.

    python recipes/eval_autoencoder.py --backbone fashion-mnist-vae --dataset fashion-mnist
    python recipes/eval_autoencoder.py --backbone fashion-mnist-vae2 --classifier-epochs 0   # PSNR only
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

from accelerate import Accelerator

from gendistill.backbones import load_backbone
from gendistill.cli import run_guarded
from gendistill.config import Checked, parse_config, setting
from gendistill.data import DataConfig, load_split
from gendistill.evaluate import classify, psnr, reconstruct, train_reference_classifier
from gendistill.io import write_json


@dataclass
class EvalAutoencoderConfig(DataConfig, Checked):
    backbone: str = "fashion-mnist-vae"
    classifier_epochs: int = setting(2, min=0)  # 0: PSNR only (no classifier is trained)
    seed: int = setting(0, min=0)
    limit: int = setting(0, min=0)  # 0: the whole test split
    out: str | None = None


def main(argv=None) -> int:
    cfg = parse_config(EvalAutoencoderConfig, argv, __doc__)
    device = Accelerator().device
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    backbone = load_backbone(cfg.backbone, image_shape=test.image_shape).to(device)
    n = cfg.limit or len(test)
    real = test.float_images(slice(0, n))
    recon = reconstruct(backbone, real, device)
    db = psnr(recon, real)
    result = {"backbone": cfg.backbone, "sha256": backbone.weights_sha256(),
              "latent_shape": list(backbone.latent_shape), "psnr_db": round(db, 2), "test_images": n,
              "config": asdict(cfg)}
    if cfg.classifier_epochs:
        net = train_reference_classifier(train, device, epochs=cfg.classifier_epochs, seed=cfg.seed)
        labels = test.labels[:n]
        acc_real = (classify(net, real, test.mean, test.std, device) == labels).float().mean().item()
        acc_recon = (classify(net, recon, test.mean, test.std, device) == labels).float().mean().item()
        result.update(classifier_acc_real=round(acc_real, 4), classifier_acc_recon=round(acc_recon, 4),
                      gap_points=round(100 * (acc_real - acc_recon), 2))
    if cfg.out:
        write_json(result, cfg.out)
    print(json.dumps(result))
    if not cfg.classifier_epochs:
        print(f"PSNR {db:.2f} dB")
        return 0
    print(f"PSNR {db:.2f} dB; classifier accuracy real {100 * result['classifier_acc_real']:.2f}% vs reconstructed "
          f"{100 * result['classifier_acc_recon']:.2f}% ({result['gap_points']:.2f} points apart)")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
