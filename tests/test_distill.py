"""The distillation loop, DM objective, evaluation and the latent_dm recipe (tiny data, tiny random VAE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, fast_first, launch, load_recipe
from safetensors import safe_open

from gendistill.objectives import StepContext, get_objective
from gendistill.objectives.distribution import mean_embedding_loss

RECIPE = ROOT / "recipes" / "latent_dm.py"


def run_recipe(tmp_path, *args, name="run"):
    out = tmp_path / name
    argv = ["--output", str(out), "--ipc", "2", "--batch-real", "4", "--eval-runs", "0", "--depth", "2", "--width", "8",
            *map(str, args)]
    assert load_recipe(RECIPE).main(argv) == 0
    return out


def test_dm_loss_matches_formula():
    torch.manual_seed(0)
    emb_real, emb_syn = torch.randn(7, 5), torch.randn(3, 5)
    expected = sum((emb_real[:, k].mean() - emb_syn[:, k].mean()) ** 2 for k in range(5))
    assert torch.allclose(mean_embedding_loss(emb_real, emb_syn), expected)


def test_dm_objective_is_sum_over_classes_of_mean_embedding_gap():
    """With no augmentation, the objective equals the formula computed with the same freshly drawn net."""
    from gendistill.nets import fresh_net

    obj = get_objective("dm", depth=2, width=8, augment="none")
    syn = torch.randn(4, 2, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    real = {0: torch.randn(5, 2, 8, 8), 1: torch.randn(6, 2, 8, 8)}
    ctx = StepContext(0, torch.Generator().manual_seed(3), (2, 8, 8), 2, torch.device("cpu"))
    loss = obj(syn, labels, real.__getitem__, ctx)
    net = fresh_net("convnet", (2, 8, 8), 2, torch.Generator().manual_seed(3), depth=2, width=8)
    expected = sum(((net.embed(real[c]).mean(0) - net.embed(syn[labels == c]).mean(0)) ** 2).sum() for c in (0, 1))
    assert torch.allclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_gaussian_mmd_matches_formula_and_vanishes_on_equal_samples():
    from gendistill.objectives.distribution import gaussian_mmd

    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randn(3, 4) + 1.0
    d = lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)  # noqa: E731
    dxx = d(x, x)
    base = dxx[~torch.eye(6, dtype=torch.bool)].median()
    k = lambda m: sum(torch.exp(-m / (s * base)) for s in (0.25, 0.5, 1.0, 2.0, 4.0))  # noqa: E731
    expected = k(dxx).mean() + k(d(y, y)).mean() - 2 * k(d(x, y)).mean()
    assert torch.allclose(gaussian_mmd(x, y), expected, atol=1e-5)
    assert gaussian_mmd(x, x).abs() < 1e-5 and gaussian_mmd(x, y) > 0.1


def test_mean_cov_loss_adds_the_covariance_gap():
    from gendistill.objectives.distribution import mean_cov_loss

    torch.manual_seed(1)
    x, y = torch.randn(8, 3), torch.randn(5, 3)
    cov = lambda e: torch.cov(e.T, correction=0)  # noqa: E731
    expected = mean_embedding_loss(x, y) + ((cov(x) - cov(y)) ** 2).sum()
    assert torch.allclose(mean_cov_loss(x, y), expected, atol=1e-5)


def test_trained_proxy_queue_learns_the_real_data_and_round_trips_its_state():
    real = {0: torch.randn(16, 2, 8, 8) + 2.0, 1: torch.randn(16, 2, 8, 8) - 2.0}
    syn, labels = torch.randn(4, 2, 8, 8, requires_grad=True), torch.tensor([0, 0, 1, 1])
    ctx = lambda step, g: StepContext(step, g, (2, 8, 8), 2, torch.device("cpu"))  # noqa: E731
    obj = get_objective("dm", depth=2, width=8, augment="none", proxy="trained", proxy_nets=2, proxy_train=2,
                        proxy_max_steps=50, proxy_lr=0.05, proxy_batch=16, ce_weight=0.5)
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        obj(syn, labels, real.__getitem__, ctx(step, g)).backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0
    net = obj._queue[0]["net"]
    accuracy = (net(torch.cat([real[0], real[1]])).argmax(1) == torch.tensor([0] * 16 + [1] * 16)).float().mean()
    assert obj._queue[0]["steps"] == 5 and accuracy > 0.9  # the queue's nets learn to tell the classes apart

    copy = get_objective("dm", depth=2, width=8, augment="none", proxy="trained", proxy_nets=2, proxy_train=2,
                         proxy_max_steps=50, proxy_lr=0.05, proxy_batch=16, ce_weight=0.5)
    copy.load_state_dict(deepcopy(obj.state_dict()))  # a checkpoint is a copy on disk
    g_copy = torch.Generator().set_state(g.get_state())
    assert torch.equal(obj(syn, labels, real.__getitem__, ctx(5, g)),
                       copy(syn, labels, real.__getitem__, ctx(5, g_copy)))


def test_unknown_kernel_or_proxy_is_a_clear_error():
    with pytest.raises(ValueError, match="--kernel must be one of linear, gaussian, mean\\+cov, got 'cubic'"):
        get_objective("dm", kernel="cubic")
    with pytest.raises(ValueError, match="--proxy must be one of fresh, trained, got 'pretrained'"):
        get_objective("dm", proxy="pretrained")
    assert get_objective("mmd").kernel == "gaussian"


@pytest.mark.parametrize("space", fast_first(["latent", "pixel"]))
def test_recipe_writes_set_grid_loss(tmp_path, tiny_vae_dir, space):
    out = run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--match-space", space, "--steps", 3)
    for name in ("set.safetensors", "grid.png", "loss.png"):
        assert (out / name).stat().st_size > 0
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        run = json.loads(f.metadata()["gendistill.run"])
        assert f.get_tensor("latents").shape == (20, 2, 14, 14)
    assert run["method"] == "dm" and run["steps_done"] == 3 and run["config"]["match_space"] == space


def test_pixel_backbone_is_classic_dm(tmp_path):
    out = run_recipe(tmp_path, "--backbone", "pixel", "--steps", 2)
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        assert f.get_tensor("latents").shape == (20, 1, 28, 28)
        assert json.loads(f.metadata()["gendistill.backbone"])["kind"] == "pixel"


@pytest.mark.slow  # end to end, over a second of CPU
def test_distillation_changes_the_set_and_lowers_loss(tmp_path, tiny_vae_dir):
    from gendistill.synthetic import SyntheticSet

    out = run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 12, "--lr", 0.05, "--init", "noise")
    final = SyntheticSet.load(out / "set.safetensors")
    first = run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 0, "--init", "noise", name="init")
    init = SyntheticSet.load(first / "set.safetensors")
    assert not torch.allclose(final.latents, init.latents)


@pytest.mark.parametrize("extra", [(), ("--proxy", "trained", "--proxy-nets", 3, "--proxy-max-steps", 2, "--kernel",
                                        "gaussian")],
                         ids=["dm", "idm-queue"])
@pytest.mark.slow  # end to end, over a second of CPU
def test_resume_equals_uninterrupted(tmp_path, tiny_vae_dir, extra):
    from gendistill.synthetic import SyntheticSet

    full = run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 6, "--checkpoint-every", 2, *extra, name="full")
    part = run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 3, "--checkpoint-every", 2, *extra, name="part")
    assert (part / "checkpoints" / "step_0000003").is_dir()
    run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 6, "--checkpoint-every", 2, "--resume", *extra,
               name="part")
    a, b = SyntheticSet.load(full / "set.safetensors"), SyntheticSet.load(part / "set.safetensors")
    assert torch.equal(a.latents, b.latents)
    assert b.run_meta["steps_done"] == 6


def test_distill_seconds_add_up_over_a_resume(monkeypatch):
    """A resumed run's set reports the time of every segment, not only the last one."""
    from gendistill import distill as mod

    now = iter([100.0, 130.0, 500.0, 520.0])
    monkeypatch.setattr(mod, "time", SimpleNamespace(time=lambda: next(now)))
    first = mod.TrainState(0)
    first.start_clock()
    saved = first.state_dict()  # checkpoint after 30 s
    resumed = mod.TrainState(0)
    resumed.load_state_dict(saved)
    resumed.start_clock()
    assert resumed.clock() == pytest.approx(50.0)
    legacy = mod.TrainState(0)
    legacy.load_state_dict({k: v for k, v in saved.items() if k != "seconds"})
    assert legacy.seconds == 0.0


def test_cosine_schedule_decays_to_zero_and_rejects_unknown_names():
    from gendistill.distill import lr_factor

    cosine = lr_factor("cosine")
    assert cosine(0, 10) == 1.0 and cosine(5, 10) == pytest.approx(0.5) and cosine(10, 10) == pytest.approx(0.0)
    assert lr_factor("constant")(7, 10) == 1.0
    with pytest.raises(ValueError, match="unknown lr schedule 'step'; use one of constant, cosine"):
        lr_factor("step")


@pytest.mark.slow  # end to end, over a second of CPU
@pytest.mark.parametrize("how", ["ctrl-c", "second-ctrl-c"])
def test_cosine_run_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_vae_dir, monkeypatch, how):
    """A first Ctrl-C finishes the running step; an exception mid-step (a second Ctrl-C) rewinds to its start."""
    import signal

    from gendistill.objectives import distribution
    from gendistill.synthetic import SyntheticSet

    args = ("--backbone", tiny_vae_dir, "--steps", 6, "--lr-schedule", "cosine", "--lr", 0.05)
    full = run_recipe(tmp_path, *args, name="full")
    calls = {"n": 0}

    def interrupting(real_loss):
        def loss(a, b):
            calls["n"] += 1
            if calls["n"] == 10 * 3 + 1:  # ten classes per step: during step 4
                if how == "ctrl-c":
                    signal.raise_signal(signal.SIGINT)
                else:
                    raise KeyboardInterrupt
            return real_loss(a, b)
        return loss

    with monkeypatch.context() as m:
        for name, fn in list(distribution.KERNELS.items()):
            m.setitem(distribution.KERNELS, name, interrupting(fn))
        with pytest.raises(KeyboardInterrupt):
            run_recipe(tmp_path, *args, name="part")
    saved = [p.name for p in (tmp_path / "part" / "checkpoints").glob("step_*")]
    assert saved == (["step_0000004"] if how == "ctrl-c" else ["step_0000003"])
    with pytest.raises(ValueError, match="different config.*steps"):  # the schedule's horizon is part of the run
        run_recipe(tmp_path, *args[:3], 8, *args[4:], "--resume", name="part")
    run_recipe(tmp_path, *args, "--resume", name="part")
    a, b = SyntheticSet.load(full / "set.safetensors"), SyntheticSet.load(tmp_path / "part" / "set.safetensors")
    assert torch.equal(a.latents, b.latents)


def test_resume_with_other_config_fails(tmp_path, tiny_vae_dir):
    run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 2, name="r")
    with pytest.raises(ValueError, match="different config.*lr"):
        run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 4, "--lr", 0.5, "--resume", name="r")


def test_resume_accepts_a_setting_added_since_at_its_neutral_default(tmp_path):
    from gendistill.distill import _check_fingerprint

    ckpt = tmp_path / "step_0000002"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"lr": 0.1, "steps": 4}))  # written before quantise_aware existed
    _check_fingerprint(ckpt, {"lr": 0.1, "steps": 4, "quantise_aware": False, "syn_batch": 0, "new": None})
    for changed in ({"quantise_aware": True}, {"syn_batch": 5}, {"lr": 0.2}):
        with pytest.raises(ValueError, match=f"different config \\({next(iter(changed))}"):
            _check_fingerprint(ckpt, {"lr": 0.1, "steps": 4, **changed})


def test_resume_without_checkpoint_fails(tmp_path, tiny_vae_dir):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 2, "--resume", name="none")


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_vae_dir, monkeypatch):
    from gendistill.objectives import distribution

    calls = {"n": 0}

    def flaky_version(real_loss):
        def flaky(a, b):
            calls["n"] += 1
            return real_loss(a, b) * (float("nan") if calls["n"] > 10 * 4 else 1.0)  # NaN from step 5 on
        return flaky

    for name, fn in list(distribution.KERNELS.items()):  # DM looks its discrepancy up when built
        monkeypatch.setitem(distribution.KERNELS, name, flaky_version(fn))
    with pytest.raises(FloatingPointError, match=r"at step 4; the last good checkpoint is .*step_0000004"):
        run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 8, "--checkpoint-every", 2, name="nan")
    assert [p.name for p in (tmp_path / "nan" / "checkpoints").glob("step_*")] == ["step_0000004"]
    assert not (tmp_path / "nan" / "set.safetensors").exists()


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_nonfinite_latents_after_a_step_stop_before_any_checkpoint_keeps_them(tmp_path, tiny_vae_dir, monkeypatch):
    """A finite loss whose gradient is NaN (sqrt at 0) makes the optimiser write NaN latents: the step raises at once,
    before the checkpoint after it (the loss check alone would notice one step later, with NaN latents checkpointed)."""
    from gendistill.objectives import distribution

    calls = {"n": 0}

    def nan_gradient_version(real_loss):
        def nan_gradient(a, b):
            calls["n"] += 1
            loss = real_loss(a, b)
            # value unchanged, gradient NaN from step 5 on
            return loss + (b.sum() * 0).sqrt() if calls["n"] > 10 * 4 else loss
        return nan_gradient

    for name, fn in list(distribution.KERNELS.items()):
        monkeypatch.setitem(distribution.KERNELS, name, nan_gradient_version(fn))
    with pytest.raises(FloatingPointError, match=r"latents became non-finite \(NaN or inf\) at step 4; the last good "
                                                 r"checkpoint is .*step_0000004"):
        run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--steps", 8, "--checkpoint-every", 1, name="nan")
    assert [p.name for p in (tmp_path / "nan" / "checkpoints").glob("step_*")] == ["step_0000004"]
    assert not (tmp_path / "nan" / "set.safetensors").exists()


@pytest.mark.slow  # end to end, over a second of CPU
def test_evaluate_returns_protocol_fields(tiny_idx_dir):
    from gendistill.data import get_dataset
    from gendistill.evaluate import EvalConfig, evaluate

    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    idx = torch.cat([train.sample_class(c, 2, torch.Generator().manual_seed(0)) for c in range(10)])
    cfg = EvalConfig(epochs=2, runs=2)
    r = evaluate(train.float_images(idx), train.labels[idx], test, cfg)
    assert set(r) >= {"mean", "std", "settings", "protocol", "archs", "num_images", "seconds"}
    assert r["settings"]["lr"] == 0.01 and r["settings"]["momentum"] == 0.9 and r["settings"]["weight_decay"] == 5e-4
    assert r["settings"]["batch"] == 256 and r["num_images"] == 20 and len(r["archs"]["convnet"]["accs"]) == 2
    assert r["last_batch"] == 20  # all 20 images in each step
    x, y = train.float_images(idx), train.labels[idx]
    assert evaluate(x, y, test, EvalConfig(epochs=1, runs=1, batch=8))["last_batch"] == 4  # 8 + 8 + 4
    assert evaluate(x[:16], y[:16], test, EvalConfig(epochs=1, runs=1, batch=8))["last_batch"] == 8
    soft = torch.nn.functional.one_hot(train.labels[idx], 10).float()
    assert 0 <= evaluate(train.float_images(idx), soft, test, cfg)["mean"] <= 1


@pytest.mark.slow  # spawns a process
@pytest.mark.parametrize("extra", [["--match-space", "latent"], ["--match-space", "pixel"], ["--backbone", "pixel"]])
def test_accelerate_launch_cpu(tmp_path, tiny_vae_dir, extra):
    backbone = [] if "--backbone" in extra else ["--backbone", str(tiny_vae_dir)]
    out = tmp_path / "launched"
    proc = launch(["--mixed_precision", "no", str(RECIPE), *backbone, *extra, "--steps", "3", "--ipc", "2",
                   "--batch-real", "4",
                    "--depth", "2", "--width", "8", "--eval-runs", "1", "--eval-epochs", "2", "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout.strip().splitlines()[-1]
    assert json.loads((out / "eval.json").read_text())["settings"]["epochs"] == 2


@pytest.mark.slow  # spawns a process
def test_bf16_mixed_precision_on_cpu(tmp_path, tiny_vae_dir):
    out = tmp_path / "bf16"
    proc = launch(["--mixed_precision", "bf16", str(RECIPE), "--backbone", str(tiny_vae_dir), "--match-space", "pixel",
                   "--steps", "2",
                    "--ipc", "2", "--batch-real", "4", "--depth", "2", "--width", "8", "--eval-runs", "0", "--output",
                   str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "set.safetensors").exists()


@pytest.mark.slow  # spawns a process
def test_recipe_bad_input_is_one_line(tmp_path, tiny_vae_dir):
    proc = subprocess.run([sys.executable, str(RECIPE), "--backbone", str(tiny_vae_dir), "--ipc", "500", "--output",
                           str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"},
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "lower --ipc" in proc.stderr
