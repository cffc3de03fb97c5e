"""The Python API (``gendistill.load_set`` / ``distill_set``), ``gendistill distill``, ``export --format hf``,
Fashion-MNIST through torchvision's reader, and (slow) the package built as a wheel and used outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NUM_CLASSES, ROOT, TEST_PER_CLASS, TRAIN_PER_CLASS, make_images, write_idx
from test_cli import assert_ok, assert_user_error, cli
from torch.utils.data import DataLoader

import gendistill
from gendistill.backbones import load_backbone
from gendistill.cli import main as cli_main
from gendistill.data import FASHION_CLASSES, get_dataset, normalize
from gendistill.recipes import make_config

IPC = 2


@pytest.fixture(scope="module")
def set_dir(tmp_path_factory, tiny_vae_dir, tiny_idx_dir) -> Path:
    """A run directory made by `gendistill distill dm` (2 steps, tiny VAE, tiny data)."""
    d = tmp_path_factory.mktemp("api") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
        mp.setenv("GENDISTILL_CACHE", str(d.parent / "cache"))
        with pytest.raises(SystemExit) as e:
            cli_main(["distill", "dm", "--backbone", str(tiny_vae_dir), "--ipc", str(IPC), "--steps", "2",
                                 "--batch-real", "4", "--depth", "2", "--width", "8", "--eval-runs", "0", "--output",
                      str(d)])
    assert e.value.code == 0
    return d


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_three_lines_with_a_dataloader(set_dir):
    ds = gendistill.load_set(set_dir / "set.safetensors")
    loader = DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(ds) == NUM_CLASSES * IPC and sum(len(b[1]) for b in loader) == len(ds)


def test_the_dataset_views(set_dir, tiny_vae_dir):
    ds = gendistill.load_set(set_dir)  # a run directory works too
    raw = gendistill.load_set(set_dir / "set.safetensors", raw=True)
    images = raw.decode()
    assert images.min() >= 0 and images.max() <= 1 and images.shape == (len(ds), 1, 28, 28)
    d = ds.meta["dataset"]
    # as the evaluation protocol feeds nets
    torch.testing.assert_close(ds[3][0], normalize(images, d["mean"], d["std"])[3])
    torch.testing.assert_close(raw[3][0], images[3])
    assert ds.latents.shape == (len(ds), 2, 14, 14) and ds.labels.tolist() == [c for c in range(NUM_CLASSES)
                                                                               for _ in range(IPC)]
    assert ds.meta["run"]["method"] == "dm" and ds.meta["backbone"]["source"] == tiny_vae_dir.name
    assert ds.backbone.weights_sha256() == load_backbone(str(tiny_vae_dir)).weights_sha256()
    assert ds.classes == FASHION_CLASSES and "DistilledSet(20 images of fashion-mnist" in repr(ds)
    # the same pairs from the decoded-images file `gendistill export` writes (no backbone needed)
    exported = set_dir / "images.safetensors"
    with pytest.raises(SystemExit):
        cli_main(["export", str(set_dir / "set.safetensors"), "--out", str(exported)])
    from_file = gendistill.load_set(exported)
    assert from_file.backbone is None and from_file.latents is None
    torch.testing.assert_close(from_file[5][0], ds[5][0])


def test_import_gendistill_is_light():
    code = ("import sys, gendistill; "
            "print(sorted(m for m in ('torch', 'diffusers', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
    assert callable(gendistill.load_set) and callable(gendistill.distill_set) and "load_set" in dir(gendistill)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_distill_set_runs_the_recipe_pipeline(tmp_path, tiny_vae_dir):
    ds = gendistill.distill_set(method="dm", dataset="fashion-mnist", ipc=1, backbone=str(tiny_vae_dir), steps=2,
                                batch_real=4, depth=2, width=8, eval_runs=1, eval_epochs=1, output=str(tmp_path / "nb"))
    assert len(ds) == NUM_CLASSES and (tmp_path / "nb" / "grid.png").is_file() and (tmp_path / "nb"
                                                                                    / "eval.json").is_file()
    assert ds.eval["archs"]["convnet"]["accs"] == json.loads((tmp_path / "nb"
                                                              / "eval.json").read_text())["archs"]["convnet"]["accs"]
    run = ds.meta["run"]
    assert run["method"] == "dm" and run["steps_done"] == 2 and run["config"]["output"] == "nb"  # the folder by name
    dsa = gendistill.distill_set(method="dsa", ipc=1, backbone=str(tiny_vae_dir), steps=1, batch_real=4, depth=2,
                                 width=8, eval_runs=0, output=str(tmp_path / "dsa"))
    assert dsa.meta["run"]["method"] == "dsa" and dsa.eval is None


def test_distill_set_and_the_command_refuse_bad_settings(capsys, tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        gendistill.distill_set(method="dm", ipcs=3)
    with pytest.raises(ValueError, match="--steps must be an integer, got 'ten'"):
        gendistill.distill_set(method="dm", steps="ten")
    with pytest.raises(ValueError, match="unknown distillation method 'dmx'"):
        gendistill.distill_set(method="dmx")
    with pytest.raises(ValueError, match="give one"):
        make_config("dsa", method="dc")
    assert_user_error(cli(capsys, "distill", "dsa", "--method", "dc"), "runs --method dsa")
    assert_user_error(cli(capsys, "distill", "nope"), "unknown distillation method 'nope'")
    code, out, _ = cli(capsys, "distill", "--help")
    assert code == 0 and "dm" in out and "tesla" in out
    assert_ok(cli(capsys, "--version")).startswith("gendistill ")


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_export_hf_dataset(capsys, tmp_path, set_dir):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    assert_ok(cli(capsys, "export", set_dir / "set.safetensors", "--format", "hf", "--out", out))
    hf = datasets.load_from_disk(str(out))
    assert hf.features["label"].names == FASHION_CLASSES and isinstance(hf.features["image"], datasets.Image)
    ds = gendistill.load_set(set_dir / "set.safetensors", raw=True)
    assert hf["label"] == ds.labels.tolist() and len(hf) == len(ds)
    pixels = torch.from_numpy(np.array(hf[7]["image"])).float().reshape(1, 28, 28) / 255
    assert (pixels - ds[7][0]).abs().max() <= 0.5 / 255 + 1e-6  # the decoded image, rounded to 8 bits
    assert json.loads(hf.info.description)["gendistill.format"] == "1"
    assert_user_error(cli(capsys, "export", set_dir / "set.safetensors", "--format", "hf", "--out", out), "--overwrite")
    # an earlier export
    assert_ok(cli(capsys, "export", set_dir / "set.safetensors", "--format", "hf", "--out", out, "--overwrite"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_user_error(cli(capsys, "export", set_dir / "set.safetensors", "--format", "hf", "--out", mine,
                          "--overwrite"),
                      "not an earlier export")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------------------- Fashion-MNIST fallback


def _torchvision_root(root: Path) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", TRAIN_PER_CLASS, 0), ("t10k", TEST_PER_CLASS, 1)):
        x, y = make_images(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return root


def test_fashion_mnist_through_torchvision_when_debian_is_absent(tmp_path, monkeypatch, no_system_fashion,
                                                                 tiny_idx_dir):
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")
    root = _torchvision_root(tmp_path / "tv")
    train = get_dataset("fashion-mnist", "train", data_dir=str(root))
    ref = get_dataset("fashion-mnist", "train", data_dir=str(tiny_idx_dir))
    assert torch.equal(train.images, ref.images) and torch.equal(train.labels,
                                                                 ref.labels) and train.classes == FASHION_CLASSES
    assert len(get_dataset("fashion-mnist", "test", data_dir=str(root))) == NUM_CLASSES * TEST_PER_CLASS
    # nothing there, network not allowed: one line saying how to allow it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="--download") as e:
        get_dataset("fashion-mnist", "train")
    assert "GENDISTILL_DOWNLOAD=1" in str(e.value) and "apt-get" in str(e.value) and "\n" not in str(e.value)
    # allowed (flag or environment): torchvision is asked to download, into ~/.cache/gendistill/data
    import torchvision

    calls = []

    class Recorder:
        def __init__(self, root, train, download):
            calls.append((root, download))
            raise OSError("no network here")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Recorder)
    with pytest.raises(FileNotFoundError, match="could not be downloaded"):
        get_dataset("fashion-mnist", "train", download=True)
    monkeypatch.setenv("GENDISTILL_DOWNLOAD", "1")
    with pytest.raises(FileNotFoundError, match="check the network"):
        get_dataset("fashion-mnist", "test")
    assert calls == [(str(tmp_path / "home" / ".cache" / "gendistill" / "data"), True)] * 2


# ------------------------------------------------------------------------------------------------ the package


@pytest.mark.slow
def test_wheel_works_outside_the_checkout(tmp_path, set_dir, tiny_idx_dir):
    """Build the wheel in a temp dir, install it (no deps: torch & co. come from this environment) into a fresh folder,
    and from an empty directory with nothing of the checkout on sys.path: a set made here with a shipped backbone,
    copied alone, decodes (sample), exports (hf) and evaluates; the recipes' entry points and --version are there."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("outputs/", "tests/")):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(wheels.glob("gendistill-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    assert (site / "gendistill" / "assets" / "backbones" / "fashion-mnist-vae"
            / "diffusion_pytorch_model.safetensors").is_file()

    # a set made on "this machine" with the shipped VAE, by the checkout's code
    made = tmp_path / "made"
    made.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GENDISTILL_ASSETS")}
    env.update(GENDISTILL_FASHION_MNIST_DIR=str(tiny_idx_dir), GENDISTILL_CACHE=str(tmp_path / "cache"),
               TQDM_DISABLE="1", GENDISTILL_HOME=str(tmp_path / "home-a"))
    subprocess.run([sys.executable, "-m", "gendistill", "init", "--ipc", "1", "--out", str(made / "set.safetensors")],
                   cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True, text=True,
                   timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(made / "set.safetensors", elsewhere / "set.safetensors")  # the set alone

    env.update(PYTHONPATH=str(site), GENDISTILL_HOME=str(tmp_path / "home-b"))
    probe = ("import gendistill, os, sys; print(gendistill.__file__); "
             f"print(any(p and os.path.realpath(p) == {str(ROOT.resolve())!r} for p in sys.path))")

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=600)

    where = run("-c", probe)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(site / "gendistill" / "__init__.py"), "False"]
    r = subprocess.run([str(site / "bin" / "gendistill"), "--version"], cwd=elsewhere, env=env, capture_output=True,
                       text=True)
    # the console script
    assert r.returncode == 0 and r.stdout.strip() == f"gendistill {gendistill.__version__}", r.stderr
    r = run("-m", "gendistill", "sample", "set.safetensors", "--out", "grid.png")
    assert r.returncode == 0 and (elsewhere / "grid.png").is_file(), r.stderr
    r = run("-m", "gendistill", "export", "set.safetensors", "--format", "hf", "--out", "hf")
    assert r.returncode == 0 and (elsewhere / "hf" / "state.json").is_file(), r.stderr
    r = run("-m", "gendistill", "eval", "set.safetensors", "--epochs", "2", "--runs", "1")
    assert r.returncode == 0 and "convnet:" in r.stdout and (elsewhere / "set.eval.json").is_file(), r.stderr
    r = run("-c", "import gendistill, torch; ds = gendistill.load_set('set.safetensors'); "
                  "x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4))); print(tuple(x.shape), "
                  "ds.backbone.source)")
    assert r.returncode == 0 and r.stdout.strip() == "(4, 1, 28, 28) fashion-mnist-vae", r.stderr
    r = run("-m", "gendistill", "distill", "dm", "--help")
    assert r.returncode == 0 and "--match-space" in r.stdout, r.stderr
    r = run("-m", "gendistill", "train-backbone", "--kind", "vae", "--help")
    assert r.returncode == 0 and "--output" in r.stdout, r.stderr
