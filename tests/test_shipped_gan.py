"""The shipped Fashion-MNIST GAN loads, is the generator the README measured, and is not mode-collapsed."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gendistill.backbones import load_backbone
from gendistill.data import get_dataset
from gendistill.evaluate import within_class_spread

ROOT = Path(__file__).resolve().parents[1]


def readme_gan_facts() -> tuple[str, float]:
    text = (ROOT / "README.md").read_text()
    sha = re.search(r"shipped GAN \(sha256 `([0-9a-f]{16})`", text)
    spread = re.search(r"\*\*([0-9.]+)x the real test images'\*\*", text)
    assert sha and spread, "README.md should state the shipped GAN's 'shipped GAN (sha256 `...`' and '**N.NNx the real test images'**' (its within-class spread)"
    return sha.group(1), float(spread.group(1))


def test_shipped_gan_is_the_measured_one_and_varies_within_each_class(monkeypatch):
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")  # the real test split (make setup installs it)
    sha, readme_spread = readme_gan_facts()
    gan = load_backbone("fashion-mnist-gan", latent_space="w+")
    assert gan.kind == "gan" and gan.weights_sha256().startswith(sha)
    labels = torch.arange(10).repeat_interleave(50)
    images = gan.sample_images(labels, torch.Generator().manual_seed(0)).clamp(0, 1)
    assert images.shape == (500, 1, 28, 28)
    test = get_dataset("fashion-mnist", "test")
    idx = torch.cat([test.class_indices(c)[:50] for c in range(10)])
    real = within_class_spread(test.float_images(idx), test.labels[idx])
    ratio = sum(g / r for g, r in zip(within_class_spread(images, labels), real)) / 10
    assert abs(ratio - readme_spread) < 0.15  # 50 per class instead of the README's 500: close, not equal
