"""The backbone trainers (autoencoder, GAN, latent diffusion) checkpoint every epoch: an interrupted run resumed with
--resume gives the same weights as an uninterrupted one; a stale or missing checkpoint is a one-line error."""

from __future__ import annotations

import pytest
from conftest import ROOT, load_recipe

from gendistill.backbones import load_backbone
from gendistill.cli import run_guarded
from gendistill.training import common as training

# 200 tiny training images: batch 64 -> 3 steps per epoch, 2 epochs
RECIPES = {
    "autoencoder": ["--epochs", "2", "--batch-size", "64", "--block-out-channels", "8", "8", "--norm-num-groups", "4"],
    "gan": ["--epochs", "2", "--batch-size", "64", "--channels", "8", "8", "8", "--d-channels", "8", "8", "8",
            "--w-dim", "16", "--z-dim", "8", "--embed-dim", "4", "--mapping-layers", "2", "--samples-per-class", "1"],
    "diffusion": ["--epochs", "2", "--batch-size", "64", "--block-out-channels", "8", "16", "--attention", "0", "1",
                  "--norm-num-groups", "4", "--attention-head-dim", "8", "--samples-per-class", "1"],
}


def _args(kind, tmp_path, tiny_vae_dir):
    args = list(RECIPES[kind])
    if kind == "diffusion":
        args += ["--vae", str(tiny_vae_dir), "--cache-dir", str(tmp_path / "cache")]
    return args


@pytest.mark.slow  # end to end, over a second of CPU
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

    # a checkpoint is there: starting over would lose it
    assert run_guarded(recipe.main, ["--output", str(part), *args]) == 2
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


@pytest.mark.slow  # end to end, over a second of CPU
@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_cli_train_backbone_calls_the_library(kind, tmp_path, capsys):
    """`gendistill train-backbone --kind KIND` runs the library's trainer (no recipe file is read) and writes a
    backbone."""
    from gendistill.cli import _main

    flags = RECIPES["autoencoder" if kind == "vae" else kind]
    assert run_guarded(_main, ["train-backbone", "--kind", kind, "--output", str(tmp_path / kind), *flags]) == 0
    assert f"saved {tmp_path / kind}" in capsys.readouterr().out
    assert load_backbone(str(tmp_path / kind)).kind == kind


def test_cli_train_backbone_unknown_kind_is_one_line(tmp_path, capsys):
    from gendistill.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-backbone", "--kind", "nope", "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "argument --kind: invalid choice: 'nope'" in err[0]


class _Payload:
    """Unpickling this runs code: it writes ``marker`` (what a tampered checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_payload_in_a_trainer_checkpoint_does_not_run(writer, tmp_path, capsys):
    import pickle

    import torch

    marker = tmp_path / "pwned"
    ckpt = training.checkpoint_path(tmp_path / "g")
    state = {"config": {}, "epoch": 0, "step": 0, "parts": _Payload(marker)}
    if writer == "torch.save":  # the format the trainers wrote before (torch.load(weights_only=False) ran it)
        torch.save(state, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(state))
    recipe = load_recipe(ROOT / "recipes" / "train_gan.py")
    assert run_guarded(recipe.main, ["--output", str(tmp_path / "g"), *RECIPES["gan"], "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable training checkpoint" in err and "Traceback" not in err
    assert not marker.exists() and ckpt.exists() and not (tmp_path / "g").exists()  # nothing ran, nothing was deleted
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: unpickling it does write the marker
    assert marker.read_text() == "pwned"


def _tiny_checkpoint(path, resume=False, seed=0):
    import dataclasses

    import torch

    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.1

    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    parts = {"net": net, "opt": opt, "sched": sched}
    return training.EpochCheckpoint(path, Cfg(), parts, torch.Generator().manual_seed(seed), resume), net, opt, sched


def test_trainer_checkpoint_is_safetensors_and_round_trips(tmp_path):
    import torch
    from safetensors import safe_open

    path = tmp_path / "x.ckpt"
    ckpt, net, opt, sched = _tiny_checkpoint(path)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    ckpt.generator.manual_seed(7)
    torch.randn(5, generator=ckpt.generator)
    ckpt.save(epoch=2, step=9)
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file: tensors + JSON metadata
        assert "gendistill.state" in f.metadata()
    again, net2, opt2, sched2 = _tiny_checkpoint(path, resume=True, seed=1)
    assert again.load() == (3, 9)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.5, 0.9)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert sched2.last_epoch == sched.last_epoch == 1
    assert torch.equal(again.generator.get_state(), ckpt.generator.get_state())


@pytest.mark.parametrize("damage", ["empty", "truncated", "another safetensors file", "missing part"])
def test_a_damaged_trainer_checkpoint_is_one_line(damage, tmp_path):
    import torch

    from gendistill.io import save_safetensors
    from gendistill.state import save_state

    path = tmp_path / "x.ckpt"
    ckpt, *_ = _tiny_checkpoint(path)
    ckpt.save(epoch=0, step=1)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "another safetensors file":
        save_safetensors({"latents": torch.zeros(2)}, path)
    else:
        save_state({"config": {"lr": 0.1}, "epoch": 0, "step": 1, "generator": torch.Generator().get_state(),
                    "parts": {}}, path)
    with pytest.raises(ValueError, match="not a readable training checkpoint") as e:
        _tiny_checkpoint(path, resume=True)[0].load()
    assert len(str(e.value).splitlines()) == 1 and "delete it and start over" in str(e.value)
