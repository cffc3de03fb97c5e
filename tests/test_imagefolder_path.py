"""A user's own data as an ImageFolder: train a VAE on it with the recipe, then distil it with the unchanged DM
recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, load_recipe
from PIL import Image
from safetensors import safe_open

from gendistill.backbones import load_backbone
from gendistill.cli import run_guarded

CLASSES = ("circle", "square", "stripes")


def _shape_image(kind: str, rng) -> np.ndarray:
    """A 3-channel 16x16 image of one of three shapes with random colour, position jitter and noise."""
    a = rng.integers(0, 40, size=(16, 16, 3)).astype(np.int64)
    colour = rng.integers(120, 255, size=3)
    dy, dx = rng.integers(-2, 3, size=2)
    yy, xx = np.mgrid[:16, :16]
    if kind == "circle":
        mask = (yy - 8 - dy) ** 2 + (xx - 8 - dx) ** 2 < 20
    elif kind == "square":
        mask = (abs(yy - 8 - dy) < 4) & (abs(xx - 8 - dx) < 4)
    else:
        mask = (yy + dy) % 4 < 2
    a[mask] += colour
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for kind in CLASSES:
            d = root / split / kind
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_shape_image(kind, rng), mode="RGB").save(d / f"{i:03d}.png")
    return root


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_imagefolder_train_vae_then_distil(tmp_path, folder):
    vae_dir = tmp_path / "vae"
    train_vae = load_recipe(ROOT / "recipes" / "train_autoencoder.py")
    assert train_vae.main(["--dataset", "imagefolder", "--data-dir", str(folder), "--output", str(vae_dir), "--epochs",
                           "1", "--block-out-channels", "8", "8", "--norm-num-groups", "4", "--batch-size", "16"]) == 0
    backbone = load_backbone(str(vae_dir))
    assert backbone.image_shape == (3, 16, 16) and backbone.latent_shape == (4, 8, 8)

    out = tmp_path / "dm"
    recipe = load_recipe(ROOT / "recipes" / "latent_dm.py")
    assert recipe.main(["--dataset", "imagefolder", "--data-dir", str(folder), "--backbone", str(vae_dir), "--ipc", "2",
                        "--steps", "3", "--batch-real", "6", "--depth", "2", "--width", "8", "--eval-runs", "1",
                        "--eval-epochs", "2", "--output", str(out)]) == 0
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        assert f.get_tensor("latents").shape == (6, 4, 8, 8)
        dataset = json.loads(f.metadata()["gendistill.dataset"])
    assert dataset["name"] == "imagefolder" and dataset["classes"] == list(CLASSES)
    result = json.loads((out / "eval.json").read_text())
    assert result["num_images"] == 6 and 0 <= result["mean"] <= 1
    assert (out / "grid.png").stat().st_size > 0


def test_write_imagefolder_round_trips_a_dataset_subset(tmp_path):
    from gendistill.data import get_dataset

    out = tmp_path / "folder"
    writer = load_recipe(ROOT / "recipes" / "write_imagefolder.py")
    assert writer.main(["--out", str(out), "--train-per-class", "2"]) == 0
    train, source = get_dataset("imagefolder", "train", str(out)), get_dataset("fashion-mnist", "train")
    test = get_dataset("imagefolder", "test", str(out))
    assert train.num_classes == source.num_classes and len(train) == 2 * source.num_classes
    assert train.classes[0].startswith("00_") and train.image_shape == source.image_shape
    assert len(test) == len(get_dataset("fashion-mnist", "test"))
    first = sorted((out / "train" / train.classes[0]).iterdir())[0]  # file names are the source indices
    assert torch.equal(train.images[0], source.images[int(first.stem)])


def test_write_imagefolder_reports_a_bad_dataset_dir_in_one_line(tmp_path, capsys):
    writer = load_recipe(ROOT / "recipes" / "write_imagefolder.py")
    assert run_guarded(writer.main, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "missing"), "--out",
                                     str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "o").exists()
