"""The shipped Fashion-MNIST VAE loads and reconstructs real test images as well as the README says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gendistill.backbones import load_backbone
from gendistill.data import get_dataset
from gendistill.evaluate import psnr, reconstruct

ROOT = Path(__file__).resolve().parents[1]


def readme_psnr() -> float:
    found = re.search(r"test-split PSNR:? \**([0-9.]+) dB", (ROOT / "README.md").read_text())
    assert found, "README.md should state the shipped VAE's test-split PSNR as 'test-split PSNR: NN.NN dB'"
    return float(found.group(1))


def test_shipped_vae_reconstructs_real_test_images(monkeypatch):
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")  # the real files from Debian's package (make setup installs it)
    test = get_dataset("fashion-mnist", "test")
    assert len(test) == 10000
    vae = load_backbone("fashion-mnist-vae")
    assert vae.kind == "vae" and tuple(vae.latent_shape) == (4, 7, 7)
    idx = torch.cat([test.class_indices(c)[:20] for c in range(test.num_classes)])  # 200 images, every class
    images = test.float_images(idx)
    assert psnr(reconstruct(vae, images), images) > readme_psnr() - 1.0
