"""Each shipped Fashion-MNIST VAE is the measured one and reconstructs real test images as well as its gendistill.json
records (``measured``: what recipes/eval_autoencoder.py gave on the whole test split)."""

from __future__ import annotations

import pytest
import torch
from conftest import measured_facts

from gendistill.backbones import load_backbone
from gendistill.data import get_dataset
from gendistill.evaluate import psnr, reconstruct

pytestmark = pytest.mark.slow  # reads the shipped assets/backbones and real data


@pytest.mark.parametrize(("name", "latent_shape"), [("fashion-mnist-vae", (4, 7, 7)),
                                                    ("fashion-mnist-vae-e12", (4, 7, 7)),
                                                    ("fashion-mnist-vae-e24", (4, 7, 7)),
                                                    ("fashion-mnist-vae-c2", (2, 7, 7))])
def test_shipped_vae_reconstructs_real_test_images(monkeypatch, name, latent_shape):
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")  # the real files from Debian's package (make setup installs it)
    test = get_dataset("fashion-mnist", "test")
    assert len(test) == 10000
    facts = measured_facts(name)
    vae = load_backbone(name)
    assert vae.kind == "vae" and tuple(vae.latent_shape) == latent_shape
    assert vae.weights_sha256() == facts["weights_sha256"]
    idx = torch.cat([test.class_indices(c)[:20] for c in range(test.num_classes)])  # 200 images, every class
    images = test.float_images(idx)
    assert psnr(reconstruct(vae, images), images) > facts["quality"]["psnr_db"] - 1.0  # 200 images, not 10,000: close
