"""The shipped Fashion-MNIST GAN is the generator its gendistill.json records as measured (``measured``: hash and
recipes/eval_gan.py's figures), and is not mode-collapsed."""

from __future__ import annotations

import pytest
import torch
from conftest import measured_facts

from gendistill.backbones import load_backbone
from gendistill.data import get_dataset
from gendistill.evaluate import within_class_spread

pytestmark = pytest.mark.slow  # reads the shipped assets/backbones and real data


def test_shipped_gan_is_the_measured_one_and_varies_within_each_class(monkeypatch):
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")  # the real test split (make setup installs it)
    facts = measured_facts("fashion-mnist-gan")
    gan = load_backbone("fashion-mnist-gan", latent_space=facts["weights_sha256_latent_space"])
    assert gan.kind == "gan" and gan.weights_sha256() == facts["weights_sha256"]
    labels = torch.arange(10).repeat_interleave(50)
    images = gan.sample_images(labels, torch.Generator().manual_seed(0)).clamp(0, 1)
    assert images.shape == (500, 1, 28, 28)
    test = get_dataset("fashion-mnist", "test")
    idx = torch.cat([test.class_indices(c)[:50] for c in range(10)])
    real = within_class_spread(test.float_images(idx), test.labels[idx])
    ratio = sum(g / r for g, r in zip(within_class_spread(images, labels), real)) / 10
    # 50 per class instead of the measured 500: close, not equal
    assert abs(ratio - facts["quality"]["spread_ratio"]) < 0.15
