"""The backbone trainers (autoencoder, GAN, latent diffusion) checkpoint every epoch: an interrupted run resumed with
--resume gives the same weights as an uninterrupted one; a stale or missing checkpoint is a one-line error."""

from __future__ import annotations

import pytest

from conftest import ROOT, load_recipe
from gendistill.backbones import load_backbone
from gendistill.training import common as training
from gendistill.cli import run_guarded

# 200 tiny training images: batch 64 -> 3 steps per epoch, 2 epochs
RECIPES = {
    "autoencoder": ["--epochs", "2", "--batch-size", "64", "--block-out-channels", "8", "8", "--norm-num-groups", "4"],
    "gan": ["--epochs", "2", "--batch-size", "64", "--channels", "8", "8", "8", "--d-channels", "8", "8", "8", "--w-dim", "16",
            "--z-dim", "8", "--embed-dim", "4", "--mapping-layers", "2", "--samples-per-class", "1"],
    "diffusion": ["--epochs", "2", "--batch-size", "64", "--block-out-channels", "8", "16", "--attention", "0", "1",
                  "--norm-num-groups", "4", "--attention-head-dim", "8", "--samples-per-class", "1"],
}


def _args(kind, tmp_path, tiny_vae_dir):
    args = list(RECIPES[kind])
    if kind == "diffusion":
        args += ["--vae", str(tiny_vae_dir), "--cache-dir", str(tmp_path / "cache")]
    return args


@pytest.mark.parametrize("kind", list(RECIPES))
def test_interrupted_training_resumes_to_the_same_weights(kind, tmp_path, tiny_vae_dir, monkeypatch, capsys):
    recipe = load_recipe(ROOT / "recipes" / f"train_{'autoencoder' if kind == 'autoencoder' else kind}.py")
    args = _args(kind, tmp_path, tiny_vae_dir)
    assert run_guarded(recipe.main, ["--output", str(tmp_path / "full"), *args]) == 0
    assert not training.checkpoint_path(tmp_path / "full").exists()  # removed once the backbone is saved

    part = tmp_path / "part"
    save = training.EpochCheckpoint.save

    def save_then_interrupt(self, epoch, step):
        save(self, epoch, step)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch

    with monkeypatch.context() as m:
        m.setattr(training.EpochCheckpoint, "save", save_then_interrupt)
        assert run_guarded(recipe.main, ["--output", str(part), *args]) == 130
    assert "run the same command with --resume" in capsys.readouterr().err and not part.exists()

    assert run_guarded(recipe.main, ["--output", str(part), *args]) == 2  # a checkpoint is there: starting over would lose it
    assert "pass --resume to continue it" in capsys.readouterr().err
    changed = ["--epochs", "3"] + args[2:]
    assert run_guarded(recipe.main, ["--output", str(part), *changed, "--resume"]) == 2
    assert "different config (epochs)" in capsys.readouterr().err

    assert run_guarded(recipe.main, ["--output", str(part), *args, "--resume"]) == 0
    assert load_backbone(str(part)).weights_sha256() == load_backbone(str(tmp_path / "full")).weights_sha256()
    assert not training.checkpoint_path(part).exists()


def test_resume_without_a_checkpoint_is_one_line(tmp_path, capsys):
    recipe = load_recipe(ROOT / "recipes" / "train_gan.py")
    assert run_guarded(recipe.main, ["--output", str(tmp_path / "g"), *RECIPES["gan"], "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint at" in err and "run without --resume" in err


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    training.checkpoint_path(tmp_path / "g").write_bytes(b"not a checkpoint")
    recipe = load_recipe(ROOT / "recipes" / "train_gan.py")
    assert run_guarded(recipe.main, ["--output", str(tmp_path / "g"), *RECIPES["gan"], "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable training checkpoint" in err


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_cli_train_backbone_calls_the_library(kind, tmp_path, capsys):
    """`gendistill train-backbone --kind KIND` runs the library's trainer (no recipe file is read) and writes a backbone."""
    from gendistill.cli import _main

    flags = RECIPES["autoencoder" if kind == "vae" else kind]
    assert run_guarded(_main, ["train-backbone", "--kind", kind, "--output", str(tmp_path / kind), *flags]) == 0
    assert f"saved {tmp_path / kind}" in capsys.readouterr().out
    assert load_backbone(str(tmp_path / kind)).kind == kind


def test_cli_train_backbone_unknown_kind_is_one_line(tmp_path, capsys):
    from gendistill.cli import _main

    with pytest.raises(SystemExit) as e:
        _main(["train-backbone", "--kind", "nope", "--output", str(tmp_path / "x")])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
